import SBXJSON
import SandboxProtocol

#if canImport(Glibc)
import Glibc
#endif

/// Who is on the other end of a connection, as the kernel recorded it at connect(2) (SO_PEERCRED):
/// a client cannot claim another identity.
struct Peer: Sendable {
    let pid: Int32
    let uid: UInt32
    let gid: UInt32

    /// Glibc's `struct ucred` (Swift's Glibc module hides it: it is declared only under _GNU_SOURCE).
    private struct UCred {
        var pid: Int32 = 0
        var uid: UInt32 = 0
        var gid: UInt32 = 0
    }

    init?(socket fd: Int32) {
        var cred = UCred()
        var length = socklen_t(MemoryLayout<UCred>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &length) == 0, length == MemoryLayout<UCred>.size else { return nil }
        pid = cred.pid
        uid = cred.uid
        gid = cred.gid
    }

    var json: JSON { .object([("pid", .int(Int64(pid))), ("uid", .int(Int64(uid))), ("gid", .int(Int64(gid)))]) }
    var description: String { "pid \(pid) uid \(uid) gid \(gid)" }
}

/// One client connection, served on its own thread: reads request lines, answers each in order,
/// until the client closes, breaks the framing, or the daemon stops.
struct Connection {
    let fd: Int32
    let peer: Peer
    let dispatcher: Dispatcher
    /// Whether the daemon is stopping: requests read from now on are answered `busy`.
    let stopping: @Sendable () -> Bool

    func serve() {
        var reader = LineReader(fd: fd, maxLineBytes: NDJSON.maxRequestBytes)
        while true {
            let line: [UInt8]
            do throws(FramingError) {
                guard let next = try reader.next() else { return }
                line = next
            } catch {
                // An oversized line cannot be skipped without reading it all: answer, then hang up.
                if case .lineTooLong = error { _ = try? sendAll(fd, dispatcher.rejectOversized(peer: peer)) }
                return
            }
            if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) { continue }
            guard let reply = dispatcher.handle(line, peer: peer, stopping: stopping()) else { continue }
            // A client that vanished (EPIPE, ECONNRESET) only ends its own connection; its request
            // was carried out and, with an idempotency key, its answer waits for a retry.
            do throws(FramingError) { try sendAll(fd, reply) } catch { return }
        }
    }
}
