#if canImport(Glibc)
import Glibc
#endif

/// SIGTERM, SIGINT and SIGHUP stop the daemon cleanly. They are taken by one thread with
/// sigwait(2) rather than by a handler, because stopping takes locks and logs, which a signal
/// handler may not do.
enum TerminationSignals {
    static let numbers: [Int32] = [SIGTERM, SIGINT, SIGHUP]

    /// Blocks the termination signals in the calling thread. Threads inherit the mask, so this
    /// runs first thing in main: no thread (ours, libfuse's, Dispatch's) ever receives them.
    static func block() {
        var set = signalSet()
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// Starts the thread that waits for them; `onSignal` runs on it for each one that arrives.
    static func startWaiting(_ onSignal: @escaping @Sendable (Int32) -> Void) throws(DaemonError) {
        try startThread {
            var set = signalSet()
            while true {
                var signal: Int32 = 0
                if sigwait(&set, &signal) == 0 { onSignal(signal) }
            }
        }
    }

    private static func signalSet() -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for s in numbers { sigaddset(&set, s) }
        return set
    }
}
