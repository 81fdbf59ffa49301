import Logging
import SBXJSON
import SandboxProtocol

#if canImport(Glibc)
import Glibc
#endif

/// `<state>/audit.jsonl` (DESIGN §8): one JSON line per call, appended with O_APPEND and one
/// write(2) per line, so lines from concurrent connections never interleave. Not fsynced per
/// line: the log records what happened, the branch store is what must survive a crash.
final class AuditLog: @unchecked Sendable {
    let path: String
    private let fd: Int32
    private let log: Logger
    private let lock = Lock()
    private var failing = false

    init(path: String, log: Logger) throws(DaemonError) {
        self.path = path
        self.log = log
        fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .system("open \(path)", errno: errno) }
    }

    deinit { close(fd) }

    /// Appends one record. A failing write (disk full) is logged once, never fatal: the call it
    /// records has already happened.
    func append(_ record: JSON) {
        let line = Array((record.text + "\n").utf8)
        lock.withLock {
            let n = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n == line.count {
                if failing { log.info("audit log \(path) is writable again") }
                failing = false
            } else if !failing {
                failing = true
                log.error("cannot append to the audit log \(path): \(n < 0 ? String(cString: strerror(errno)) : "short write")")
            }
        }
    }
}

/// What the audit log says about one call; filled in as the call is read and answered.
struct AuditRecord {
    let callID: String
    let peer: Peer
    let bytesIn: Int
    var requestID: JSON?
    var method: String?
    var branch: String?

    /// The record as written: `outcome` is "ok" or the error's kind.
    func json(outcome: Result<JSON, RPCError>, replayed: Bool, durationMs: Double, bytesOut: Int, extra: [(String, JSON)]) -> JSON {
        var members: [(String, JSON)] = [
            ("time", .string(rfc3339Now())),
            ("call_id", .string(callID)),
            ("request_id", requestID ?? .null),
            ("peer", peer.json),
            ("method", method.map { .string($0) } ?? .null),
            ("branch", branch.map { .string($0) } ?? .null),
        ]
        switch outcome {
        case .success: members.append(("outcome", .string("ok")))
        case .failure(let e):
            members += [("outcome", .string(e.kindName)), ("code", .int(Int64(e.code))), ("error", .string(e.message))]
        }
        members += extra
        members += [
            ("replayed", .bool(replayed)),
            ("duration_ms", .double((durationMs * 1000).rounded() / 1000)),
            ("bytes_in", .int(Int64(bytesIn))),
            ("bytes_out", .int(Int64(bytesOut))),
        ]
        return .object(members)
    }
}

/// Now as RFC 3339 in UTC with milliseconds: `2025-11-22T06:12:00.123Z`.
func rfc3339Now() -> String {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    var seconds = time_t(ts.tv_sec)
    var t = tm()
    gmtime_r(&seconds, &t)
    func pad(_ v: Int32, _ width: Int) -> String {
        let s = String(v)
        return String(repeating: "0", count: max(0, width - s.count)) + s
    }
    return "\(pad(t.tm_year + 1900, 4))-\(pad(t.tm_mon + 1, 2))-\(pad(t.tm_mday, 2))T"
        + "\(pad(t.tm_hour, 2)):\(pad(t.tm_min, 2)):\(pad(t.tm_sec, 2)).\(pad(Int32(ts.tv_nsec / 1_000_000), 3))Z"
}
