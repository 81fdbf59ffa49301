import SBXJSON

/// The numbers `status` reports: how much the daemon did since it started.
final class Counters: @unchecked Sendable {
    enum Name: String, CaseIterable {
        case requests, errors, replays
        case creates, commits, conflicts, aborts
        case connections
        case connectionsOpen = "connections_open"
        case connectionsRefused = "connections_refused"
    }

    private let lock = Lock()
    private var values = [Int](repeating: 0, count: Name.allCases.count)

    func add(_ name: Name, _ amount: Int = 1) {
        let index = Name.allCases.firstIndex(of: name)!
        lock.withLock { values[index] += amount }
    }

    subscript(name: Name) -> Int {
        let index = Name.allCases.firstIndex(of: name)!
        return lock.withLock { values[index] }
    }

    var json: JSON {
        let snapshot = lock.withLock { values }
        return .object(zip(Name.allCases, snapshot).map { ($0.rawValue, .int(Int64($1))) })
    }
}
