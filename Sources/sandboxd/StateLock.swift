#if canImport(Glibc)
import Glibc
#endif

/// An exclusive flock on `<state>/sandboxd.lock`, held for the daemon's life: two daemons on one
/// state directory (say, started with different sockets) would corrupt each other's branches and
/// mounts. The kernel drops the lock when the process dies, so a killed daemon never leaves it stale.
struct StateLock {
    let fd: Int32

    init(stateDirectory: String) throws(DaemonError) {
        let path = stateDirectory + "/sandboxd.lock"
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .system("open \(path)", errno: errno) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let e = errno
            close(fd)
            if e == EWOULDBLOCK { throw .stateInUse(stateDirectory) }
            throw .system("flock \(path)", errno: e)
        }
    }
}

/// `mkdir -p`: creates `path` and its missing parents with `mode`.
func makeDirectories(_ path: String, mode: mode_t) throws(DaemonError) {
    var prefix = path.hasPrefix("/") ? "" : "."
    for part in path.split(separator: "/") {
        prefix += "/" + part
        if mkdir(prefix, mode) != 0 && errno != EEXIST { throw .system("mkdir \(prefix)", errno: errno) }
    }
}
