import Logging
import SBXJSON
import SandboxProtocol

/// Turns one request line into one response line: decodes it, answers it (through the
/// idempotency cache when it carries a key), counts it and writes its audit record.
final class Dispatcher: Sendable {
    let methods: Methods
    let idempotency: IdempotencyCache
    let audit: AuditLog
    let counters: Counters
    let log: Logger
    private let callIDs = CallIDs()

    init(methods: Methods, idempotency: IdempotencyCache, audit: AuditLog, counters: Counters, log: Logger) {
        self.methods = methods
        self.idempotency = idempotency
        self.audit = audit
        self.counters = counters
        self.log = log
    }

    /// The response line (newline included), or nil for a notification. Requests that arrive
    /// while the daemon stops are answered `busy` without being run.
    func handle(_ line: [UInt8], peer: Peer, stopping: Bool) -> [UInt8]? {
        let started = monotonicSeconds()
        var record = AuditRecord(callID: callIDs.next(), peer: peer, bytesIn: line.count)
        let answerID: JSON?
        var outcome: Result<JSON, RPCError>
        var replayed = false
        switch Request.decode(line) {
        case .failure(let rejection):
            answerID = rejection.id
            outcome = .failure(rejection.error)
        case .success(let request):
            answerID = request.id
            record.requestID = request.id
            record.method = request.method
            record.branch = (request.params["branch"] ?? request.params["from"])?.stringValue
            if stopping {
                outcome = .failure(RPCError(.busy, "sandboxd is stopping"))
            } else {
                (outcome, replayed) = answer(request)
            }
        }
        let reply = answerID.map { Response(id: $0, outcome: outcome).line }
        finish(record, outcome, replayed: replayed, started: started, bytesOut: reply?.count ?? 0)
        return reply
    }

    /// The answer to a line longer than the daemon reads; the connection is closed after it.
    func rejectOversized(peer: Peer) -> [UInt8] {
        let started = monotonicSeconds()
        let outcome = Result<JSON, RPCError>.failure(.lineTooLong(max: NDJSON.maxRequestBytes))
        let reply = Response(id: .null, outcome: outcome).line
        let record = AuditRecord(callID: callIDs.next(), peer: peer, bytesIn: NDJSON.maxRequestBytes)
        finish(record, outcome, replayed: false, started: started, bytesOut: reply.count)
        return reply
    }

    private func answer(_ request: Request) -> (Result<JSON, RPCError>, replayed: Bool) {
        switch request.params[Request.idempotencyKeyParam] {
        case nil, .null?:
            return (methods.call(request), false)
        case .string(let key)? where !key.isEmpty && key.utf8.count <= 256:
            let (answer, replayed) = idempotency.answer(method: request.method, key: key, params: request.params) { methods.call(request) }
            return (answer, replayed)
        default:
            return (.failure(.invalidParam(Request.idempotencyKeyParam, "param 'idempotency_key' must be a string of 1 to 256 bytes")), false)
        }
    }

    private func finish(_ record: AuditRecord, _ outcome: Result<JSON, RPCError>, replayed: Bool, started: Double, bytesOut: Int) {
        let durationMs = (monotonicSeconds() - started) * 1000
        counters.add(.requests)
        if replayed { counters.add(.replays) }
        var extra: [(String, JSON)] = []
        switch outcome {
        case .success(let result):
            // What a call made or undid, so the log alone can trace a branch.
            if record.method == Method.branchCreate.rawValue, let made = result["branches"]?.arrayValue {
                extra.append(("created", .array(made.compactMap { $0["id"] })))
            }
            if let invalidated = result["invalidated"] { extra.append(("invalidated", invalidated)) }
        case .failure(let error):
            counters.add(.errors)
            log.debug("call \(record.callID) \(record.method ?? "-") failed: \(error.kindName): \(error.message)")
        }
        audit.append(record.json(outcome: outcome, replayed: replayed, durationMs: durationMs, bytesOut: bytesOut, extra: extra))
    }
}

/// Call ids: a random per-run prefix and a counter (`c5f3a9e1-42`), unique across restarts and
/// in the order the daemon read the calls.
private final class CallIDs: @unchecked Sendable {
    private let prefix = "c" + String(UInt32.random(in: 0...UInt32.max) | 0x1000_0000, radix: 16)
    private let lock = Lock()
    private var counter = 0

    func next() -> String {
        prefix + "-" + String(lock.withLock { counter += 1; return counter })
    }
}
