import SBXJSON

/// What went wrong, in words a client can branch on without parsing messages: the `data.kind`
/// of every protocol error (DESIGN §6). The raw values are the wire names.
public enum ErrorKind: String, Sendable, CaseIterable {
    case invalidRequest = "invalid_request"
    case invalidParams = "invalid_params"
    case notFound = "not_found"
    case conflict
    case stale
    case frozen
    case limit
    case busy
    case `internal`

    /// The JSON-RPC code an error of this kind carries. Only three errors pick another code
    /// (see `RPCError`): a parse error (-32700), an unknown method (-32601), an oversized line (-32600).
    public var code: Int {
        switch self {
        case .invalidRequest: return RPCCode.invalidRequest
        case .invalidParams: return RPCCode.invalidParams
        case .internal: return RPCCode.internalError
        case .notFound: return -32001
        case .conflict: return -32002
        case .stale: return -32003
        case .frozen: return -32004
        case .limit: return -32005
        case .busy: return -32006
        }
    }
}

/// The codes JSON-RPC 2.0 itself defines.
public enum RPCCode {
    public static let parseError = -32700
    public static let invalidRequest = -32600
    public static let methodNotFound = -32601
    public static let invalidParams = -32602
    public static let internalError = -32603
}

/// A JSON-RPC error object: `{code, message, data: {kind, ...}}`. `data` always holds `kind`;
/// other members name what the error is about (`param`, `branch`, `winner`, ...).
public struct RPCError: Error, Equatable, Sendable, CustomStringConvertible {
    public var code: Int
    public var message: String
    /// The whole `data` object, `kind` first.
    public var data: JSON

    public init(code: Int, message: String, data: JSON) {
        self.code = code
        self.message = message
        self.data = data
    }

    /// An error of `kind` with its usual code; `details` are appended to `data` after `kind`.
    public init(_ kind: ErrorKind, _ message: String, details: [(String, JSON)] = [], code: Int? = nil) {
        self.init(code: code ?? kind.code, message: message, data: .object([("kind", .string(kind.rawValue))] + details))
    }

    /// The wire name of the kind; a kind this build does not know (a newer daemon) stays readable here.
    public var kindName: String { data["kind"]?.stringValue ?? ErrorKind.internal.rawValue }
    public var kind: ErrorKind? { ErrorKind(rawValue: kindName) }
    public var description: String { message }

    public var json: JSON { .object([("code", .int(Int64(code))), ("message", .string(message)), ("data", data)]) }

    /// Reads an error object as a daemon sent it.
    public init(json: JSON) throws(ProtocolViolation) {
        guard let code = json["code"]?.intValue, let message = json["message"]?.stringValue else {
            throw ProtocolViolation("error object without an integer code and a string message: \(json.text.prefix(200))")
        }
        let data = json["data"] ?? .object([])
        self.init(code: Int(code), message: message, data: data.objectValue != nil ? data : .object([("detail", data)]))
    }

    // MARK: - The errors the framing and the dispatcher produce

    /// The line is not JSON.
    public static func parseError(_ reason: String) -> RPCError {
        RPCError(.invalidRequest, "parse error: \(reason)", code: RPCCode.parseError)
    }

    public static func methodNotFound(_ method: String) -> RPCError {
        RPCError(.invalidRequest, "unknown method '\(method)'", details: [("method", .string(method))], code: RPCCode.methodNotFound)
    }

    /// A param is missing, of the wrong type or out of range; `param` names it.
    public static func invalidParam(_ param: String, _ message: String) -> RPCError {
        RPCError(.invalidParams, message, details: [("param", .string(param))])
    }

    /// A request line longer than the daemon reads. The code says the request was unusable
    /// (-32600), the kind says why; the daemon closes the connection after sending it.
    public static func lineTooLong(max: Int) -> RPCError {
        RPCError(.limit, "request line longer than \(max) bytes", details: [("max_bytes", .int(Int64(max)))],
                 code: RPCCode.invalidRequest)
    }
}

/// The peer broke the protocol (a response that is not a JSON-RPC response, ...).
public struct ProtocolViolation: Error, Equatable, Sendable, CustomStringConvertible {
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}
