import SBXJSON
import SandboxProtocol

/// First answers by `idempotency_key`, per method: a client that lost an answer (timeout, dropped
/// connection) retries with the same key and gets the answer of the call that already happened,
/// instead of a second branch or a second commit attempt. A retry that arrives while the first
/// call still runs waits for it. Kept in memory only (a restart forgets them), at most `capacity`
/// answers, least recently used dropped first.
final class IdempotencyCache: @unchecked Sendable {
    private struct Key: Hashable {
        let method: String
        let key: String
    }

    private struct Slot {
        /// The params without the key, canonical: a reused key with other params is refused.
        let fingerprint: String
        var answer: Result<JSON, RPCError>?
        var lastUse: UInt64
    }

    let capacity: Int
    private let lock = Lock()
    private var slots: [Key: Slot] = [:]
    private var clock: UInt64 = 0

    init(capacity: Int = 4096) { self.capacity = capacity }

    /// The remembered answer for (`method`, `key`), or `compute`'s, remembered. `replayed` says
    /// whether it was remembered.
    func answer(method: String, key: String, params: JSON, compute: () -> Result<JSON, RPCError>)
        -> (answer: Result<JSON, RPCError>, replayed: Bool)
    {
        let id = Key(method: method, key: key)
        let fingerprint = Self.canonical(params, dropping: Request.idempotencyKeyParam).text
        switch lock.withLock({ lookUp(id, fingerprint) }) {
        case .remembered(let answer): return (answer, true)
        case .otherParams:
            return (.failure(.invalidParam(Request.idempotencyKeyParam,
                                           "idempotency_key '\(key)' was already used for \(method) with other params")), false)
        case .first:
            let answer = compute()
            lock.withLock {
                slots[id]?.answer = answer
                evictIfFull()
                lock.broadcast()
            }
            return (answer, false)
        }
    }

    private enum Lookup {
        case first
        case otherParams
        case remembered(Result<JSON, RPCError>)
    }

    /// With the lock held. A key whose first call is still running is waited for.
    private func lookUp(_ id: Key, _ fingerprint: String) -> Lookup {
        clock += 1
        while let slot = slots[id] {
            guard slot.fingerprint == fingerprint else { return .otherParams }
            if let answer = slot.answer {
                slots[id]?.lastUse = clock
                return .remembered(answer)
            }
            lock.wait()
        }
        // New, or evicted between its answer and our wake-up (only under a flood of new keys).
        slots[id] = Slot(fingerprint: fingerprint, answer: nil, lastUse: clock)
        return .first
    }

    /// Drops the least recently used eighth of the answers once over capacity: one sort per
    /// `capacity / 8` new keys instead of a list kept in order on every call.
    private func evictIfFull() {
        guard slots.count > capacity else { return }
        let done = slots.filter { $0.value.answer != nil }.sorted { $0.value.lastUse < $1.value.lastUse }
        for (key, _) in done.prefix(slots.count - capacity * 7 / 8) { slots[key] = nil }
    }

    /// `value` with object members sorted by name (the last of duplicates kept, as the parser's
    /// lookup does), so that the same params sent with another member order match.
    static func canonical(_ value: JSON, dropping: String? = nil) -> JSON {
        switch value {
        case .array(let items): return .array(items.map { canonical($0) })
        case .object(let members):
            var latest: [String: JSON] = [:]
            for (name, member) in members where name != dropping { latest[name] = member }
            return .object(latest.keys.sorted().map { ($0, canonical(latest[$0]!)) })
        default: return value
        }
    }
}
