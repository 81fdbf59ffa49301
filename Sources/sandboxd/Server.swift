import Logging
import SBXJSON
import SandboxProtocol

#if canImport(Glibc)
import Glibc
#endif

/// Accepts connections on the listener and serves each on its own thread; `stop` (from any
/// thread) ends the accept loop, lets in-flight requests finish and hangs up on idle clients.
final class Server: @unchecked Sendable {
    let listener: Listener
    let dispatcher: Dispatcher
    let counters: Counters
    let log: Logger
    /// More simultaneous clients than this are answered `busy` and closed.
    let maxConnections = 256
    /// How long a stop waits for requests in flight before the daemon exits anyway.
    let drainSeconds = 30.0

    private let lock = Lock()
    private var open: Set<Int32> = []
    private var stopping = false
    /// A pipe that `stop` writes to, waking the accept loop's poll.
    private let wakeRead: Int32
    private let wakeWrite: Int32

    init(listener: Listener, dispatcher: Dispatcher, counters: Counters, log: Logger) throws(DaemonError) {
        self.listener = listener
        self.dispatcher = dispatcher
        self.counters = counters
        self.log = log
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw .system("pipe", errno: errno) }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }  // nothing in sandboxd execs yet, so nothing can inherit them meanwhile
        wakeRead = fds[0]
        wakeWrite = fds[1]
    }

    var isStopping: Bool { lock.withLock { stopping } }

    /// Begins the shutdown; safe from any thread, any number of times.
    func stop() {
        lock.withLock { stopping = true }
        var byte: UInt8 = 1
        _ = write(wakeWrite, &byte, 1)
    }

    /// Runs until `stop`: accepts, then drains. Returns once every connection has ended or the
    /// drain deadline passed. The socket file is gone when it returns.
    func serve() {
        acceptLoop()
        listener.remove()
        lock.withLock {
            // SHUT_RD wakes a thread blocked reading an idle client (read returns 0) but still lets
            // a thread in the middle of a request send its answer.
            for fd in open { shutdown(fd, Int32(SHUT_RD)) }
        }
        // Idle clients go at once; only say something when requests in flight keep us waiting.
        if waitForConnections(until: monotonicSeconds() + 0.2) > 0 {
            log.info("waiting for \(lock.withLock { open.count }) connection(s) to finish their requests")
            let left = waitForConnections(until: monotonicSeconds() + drainSeconds)
            if left > 0 { log.warning("\(left) connection(s) still busy after \(Int(drainSeconds)) s; stopping anyway") }
        }
    }

    /// Waits until every connection has ended or `deadline` passes; returns how many are left.
    private func waitForConnections(until deadline: Double) -> Int {
        lock.withLock {
            while !open.isEmpty && monotonicSeconds() < deadline { lock.wait(until: deadline) }
            return open.count
        }
    }

    private func acceptLoop() {
        var fds = [pollfd(fd: listener.fd, events: Int16(POLLIN), revents: 0), pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
        while !isStopping {
            let ready = poll(&fds, 2, -1)
            if ready < 0 && errno != EINTR {
                log.error("poll: \(String(cString: strerror(errno)))")
                usleep(100_000)
            }
            guard ready > 0, fds[0].revents != 0, !isStopping else { continue }
            let fd = Accept.accept(listener.fd)
            if fd < 0 {
                let e = errno
                // EMFILE/ENFILE/ENOBUFS/ENOMEM: out of resources for now; back off instead of spinning.
                if e != EAGAIN && e != EWOULDBLOCK && e != EINTR && e != ECONNABORTED {
                    log.error("accept: \(String(cString: strerror(e)))")
                    usleep(50_000)
                }
                continue
            }
            admit(fd)
        }
    }

    private func admit(_ fd: Int32) {
        counters.add(.connections)
        guard let peer = Peer(socket: fd) else {
            log.warning("closing a connection whose peer credentials cannot be read: \(String(cString: strerror(errno)))")
            close(fd)
            return
        }
        // Mode 0600 already keeps others out; this also holds if someone loosened the socket's mode.
        guard peer.uid == geteuid() || peer.uid == 0 else {
            refuse(fd, peer, RPCError(.invalidRequest, "uid \(peer.uid) may not use this sandboxd"), level: .warning)
            return
        }
        let tooMany = lock.withLock { open.count >= maxConnections }
        guard !tooMany else {
            refuse(fd, peer, RPCError(.busy, "too many connections (\(maxConnections)); retry later"), level: .warning)
            return
        }
        log.info("connection from \(peer.description)")
        // A client that stops reading its answers must not pin this connection's thread forever
        // (and with it a clean stop): a send blocked this long fails and ends the connection.
        var timeout = timeval(tv_sec: 30, tv_usec: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        lock.withLock { _ = open.insert(fd) }
        counters.add(.connectionsOpen)
        let connection = Connection(fd: fd, peer: peer, dispatcher: dispatcher, stopping: { [self] in isStopping })
        do throws(DaemonError) {
            try startThread { [self] in
                connection.serve()
                finished(fd, peer)
            }
        } catch {
            log.error("cannot serve \(peer.description): \(error)")
            finished(fd, peer)
        }
    }

    /// Answers a connection we will not serve with one error (id null) and closes it.
    private func refuse(_ fd: Int32, _ peer: Peer, _ error: RPCError, level: Logger.Level) {
        log.log(level: level, "refused connection from \(peer.description): \(error.message)")
        counters.add(.connectionsRefused)
        _ = try? sendAll(fd, Response(id: .null, outcome: .failure(error)).line)
        close(fd)
    }

    private func finished(_ fd: Int32, _ peer: Peer) {
        lock.withLock {
            // Closed under the lock: `serve` shuts connections down under it too, so it can never
            // hit a number the kernel has already handed to a new file.
            open.remove(fd)
            close(fd)
            lock.broadcast()
        }
        counters.add(.connectionsOpen, -1)
        log.debug("connection from \(peer.description) closed")
    }
}

/// accept4(2) with SOCK_CLOEXEC, so an accepted socket never leaks into a process the daemon
/// starts. Swift's Glibc module hides accept4 (it is declared only under _GNU_SOURCE); the
/// symbol is looked up once, and plain accept plus FD_CLOEXEC is the fallback.
enum Accept {
    private typealias Accept4 = @convention(c) (Int32, UnsafeMutablePointer<sockaddr>?, UnsafeMutablePointer<socklen_t>?, Int32) -> Int32
    private static let accept4: Accept4? = {
        guard let handle = dlopen(nil, RTLD_NOW), let symbol = dlsym(handle, "accept4") else { return nil }
        return unsafeBitCast(symbol, to: Accept4.self)
    }()

    static func accept(_ listener: Int32) -> Int32 {
        if let accept4 { return accept4(listener, nil, nil, Int32(SOCK_CLOEXEC.rawValue)) }
        let fd = Glibc.accept(listener, nil, nil)
        if fd >= 0 { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        return fd
    }
}
