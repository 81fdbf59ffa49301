import SBXJSON
import SandboxProtocol

/// A request's params, read one by name with its type checked. Every refusal is an
/// `invalid_params` error whose message and `data.param` name the param. Unknown params are
/// refused too (`finish`), so that a typo never silently falls back to a default.
struct Params {
    private let method: String
    private let members: [(String, JSON)]
    private var known: Set<String> = [Request.idempotencyKeyParam]

    init(_ params: JSON, method: String) {
        self.method = method
        members = params.objectValue ?? []
    }

    /// A required string.
    mutating func string(_ name: String) throws(RPCError) -> String {
        guard let value = try optionalString(name) else { throw .invalidParam(name, "missing param '\(name)' (a string)") }
        return value
    }

    /// A string, nil when absent or null.
    mutating func optionalString(_ name: String) throws(RPCError) -> String? {
        guard let value = lookUp(name) else { return nil }
        guard let s = value.stringValue else { throw mistyped(name, "a string", value) }
        return s
    }

    /// An integer in `range`, nil when absent or null.
    mutating func optionalInt(_ name: String, in range: ClosedRange<Int>) throws(RPCError) -> Int? {
        guard let value = lookUp(name) else { return nil }
        guard let i = value.intValue, let n = Int(exactly: i) else { throw mistyped(name, "an integer", value) }
        guard range.contains(n) else {
            throw .invalidParam(name, "param '\(name)' must be between \(range.lowerBound) and \(range.upperBound), got \(n)")
        }
        return n
    }

    /// Refuses params the method does not take.
    func finish() throws(RPCError) {
        if let (name, _) = members.first(where: { !known.contains($0.0) }) {
            throw .invalidParam(name, "unknown param '\(name)' for \(method)")
        }
    }

    private mutating func lookUp(_ name: String) -> JSON? {
        known.insert(name)
        guard let value = members.last(where: { $0.0 == name })?.1, value != .null else { return nil }
        return value
    }

    private func mistyped(_ name: String, _ expected: String, _ value: JSON) -> RPCError {
        .invalidParam(name, "param '\(name)' must be \(expected), got \(value.typeName)")
    }
}
