import SandboxProtocol

#if canImport(Glibc)
import Glibc
#endif

/// The daemon's listening Unix socket. It appears at its path already mode 0600 and listening
/// (bound under a temporary name, then hard-linked into place), and the link fails rather than
/// replace a socket that another daemon put there meanwhile.
struct Listener {
    let path: String
    let fd: Int32
    /// The socket file's identity, so that `remove` never unlinks a successor's socket.
    private let device: UInt64
    private let inode: UInt64

    /// Makes the path free for a new daemon: refuses when a live daemon answers there or when the
    /// path holds something other than a socket; removes a stale socket (nobody listening).
    /// Returns whether it removed one.
    static func clearStale(_ path: String) throws(DaemonError) -> Bool {
        let address = try unixAddress(path)
        var st = stat()
        guard lstat(path, &st) == 0 else {
            if errno == ENOENT { return false }
            throw .system("stat \(path)", errno: errno)
        }
        guard st.st_mode & S_IFMT == S_IFSOCK else { throw .notASocket(path) }
        switch Result(catching: { () throws(FramingError) in try connectUnix(address) }) {
        case .success(let fd):
            close(fd)
            throw .socketInUse(path)
        case .failure(.io(_, let e)) where e == ECONNREFUSED:
            guard unlink(path) == 0 || errno == ENOENT else { throw .system("remove stale socket \(path)", errno: errno) }
            return true
        case .failure(.io(let what, let e)):
            throw .system("\(what) \(path)", errno: e)
        case .failure(let other):
            throw .system("connect \(path): \(other)", errno: EIO)
        }
    }

    /// Binds, restricts to the owner, listens, then links the socket into place.
    static func create(_ path: String) throws(DaemonError) -> Listener {
        _ = try unixAddress(path)  // refuse a path that cannot work before making anything
        let directory = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
        let temporary = (directory.isEmpty ? "" : directory) + "/.sandboxd-\(getpid()).sock"
        let temporaryAddress = try unixAddress(temporary)
        unlink(temporary)  // a leftover of a killed process that had our pid: never a live socket of ours

        let fd = unixStreamSocket()
        guard fd >= 0 else { throw .system("socket", errno: errno) }
        func fail(_ what: String, _ e: Int32) -> DaemonError {
            close(fd)
            unlink(temporary)
            return .system(what, errno: e)
        }
        guard temporaryAddress.withSockaddr({ bind(fd, $0, $1) }) == 0 else { throw fail("bind \(temporary)", errno) }
        // chmod before listen: until then nobody can connect, whatever the mode the umask gave.
        guard chmod(temporary, 0o600) == 0 else { throw fail("chmod \(temporary)", errno) }
        var st = stat()
        guard lstat(temporary, &st) == 0 else { throw fail("stat \(temporary)", errno) }
        guard listen(fd, 128) == 0 else { throw fail("listen", errno) }
        // Non-blocking: the accept loop polls, and a connection that vanishes between poll and
        // accept must not block the loop.
        guard fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) == 0 else { throw fail("fcntl O_NONBLOCK", errno) }
        guard link(temporary, path) == 0 else {
            let e = errno
            close(fd)
            unlink(temporary)
            if e == EEXIST { throw .socketInUse(path) }
            throw .system("link \(temporary) -> \(path)", errno: e)
        }
        unlink(temporary)
        return Listener(path: path, fd: fd, device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
    }

    /// Stops listening and removes the socket file if it is still ours.
    func remove() {
        close(fd)
        var st = stat()
        if lstat(path, &st) == 0, UInt64(st.st_dev) == device, UInt64(st.st_ino) == inode { unlink(path) }
    }

    private static func unixAddress(_ path: String) throws(DaemonError) -> UnixAddress {
        do throws(SocketPathError) { return try UnixAddress(path) } catch { throw .badSocketPath(error) }
    }
}
