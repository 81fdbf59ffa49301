import SBXJSON

/// One JSON-RPC 2.0 request (DESIGN §6). A request without `id` is a notification: the daemon
/// acts on it and sends nothing back.
public struct Request: Sendable {
    /// `nil` for a notification; otherwise a string, a number or null, echoed in the response.
    public var id: JSON?
    public var method: String
    /// Always an object (`{}` when the request had no params).
    public var params: JSON

    public init(id: JSON?, method: String, params: JSON = .object([])) {
        self.id = id
        self.method = method
        self.params = params
    }

    /// The params member that makes a retry safe: the daemon answers a repeated key (for the same
    /// method) with the first answer instead of acting again.
    public static let idempotencyKeyParam = "idempotency_key"

    public var json: JSON {
        var members: [(String, JSON)] = [("jsonrpc", .string("2.0"))]
        if let id { members.append(("id", id)) }
        members.append(("method", .string(method)))
        members.append(("params", params))
        return .object(members)
    }

    /// Why a line is not a usable request, with the id to answer under (null when it could not be read).
    public struct Rejection: Error, Sendable {
        public let id: JSON
        public let error: RPCError
    }

    /// Reads one request line. Anything structurally wrong is a `Rejection`, which the daemon
    /// answers even when the line had no id (JSON-RPC 2.0 §5: id null when it cannot be known).
    public static func decode(_ line: [UInt8]) -> Result<Request, Rejection> {
        var bytes = line
        let value: JSON
        do { value = try JSON.parse(bytes: &bytes) } catch {
            return .failure(Rejection(id: .null, error: .parseError(error.description)))
        }
        func reject(_ id: JSON, _ message: String) -> Result<Request, Rejection> {
            .failure(Rejection(id: id, error: RPCError(.invalidRequest, message)))
        }
        if case .array = value {
            return reject(.null, "batch requests are not supported: send one request object per line")
        }
        guard value.objectValue != nil else { return reject(.null, "a request must be a JSON object, got \(value.typeName)") }
        let id = value["id"]
        switch id {
        case nil, .string?, .int?, .double?, .null?: break
        default: return reject(.null, "id must be a string, a number or null, got \(id!.typeName)")
        }
        guard value["jsonrpc"] == .string("2.0") else { return reject(id ?? .null, "jsonrpc must be \"2.0\"") }
        guard let method = value["method"]?.stringValue else {
            return reject(id ?? .null, value["method"] == nil ? "missing method" : "method must be a string")
        }
        let params = value["params"] ?? .object([])
        switch params {
        case .object: break
        case .array:
            return .failure(Rejection(id: id ?? .null, error: .invalidParam("params", "params must be an object (named params), got an array")))
        default: return reject(id ?? .null, "params must be an object, got \(params.typeName)")
        }
        return .success(Request(id: id, method: method, params: params))
    }
}

/// One JSON-RPC 2.0 response: the request's id and either a result or an error.
public struct Response: Sendable {
    public var id: JSON
    public var outcome: Result<JSON, RPCError>

    public init(id: JSON, outcome: Result<JSON, RPCError>) {
        self.id = id
        self.outcome = outcome
    }

    public var json: JSON {
        switch outcome {
        case .success(let result): return .object([("jsonrpc", .string("2.0")), ("id", id), ("result", result)])
        case .failure(let error): return .object([("jsonrpc", .string("2.0")), ("id", id), ("error", error.json)])
        }
    }

    /// The response as one NDJSON line, newline included.
    public var line: [UInt8] { Array((json.text + "\n").utf8) }

    /// Reads a line the daemon sent; nil for a notification (a method and no id), which the
    /// daemon may send ahead of a response (streamed output).
    public static func decode(_ line: [UInt8]) throws(ProtocolViolation) -> Response? {
        var bytes = line
        let value: JSON
        do { value = try JSON.parse(bytes: &bytes) } catch { throw ProtocolViolation("response is not JSON: \(error)") }
        guard value.objectValue != nil, value["jsonrpc"] == .string("2.0") else {
            throw ProtocolViolation("not a JSON-RPC 2.0 message: \(String(decoding: line.prefix(200), as: UTF8.self))")
        }
        guard let id = value["id"] else {
            if value["method"]?.stringValue != nil { return nil }
            throw ProtocolViolation("a response without an id: \(String(decoding: line.prefix(200), as: UTF8.self))")
        }
        switch (value["result"], value["error"]) {
        case let (result?, nil): return Response(id: id, outcome: .success(result))
        case let (nil, error?): return Response(id: id, outcome: .failure(try RPCError(json: error)))
        default: throw ProtocolViolation("a response needs exactly one of result and error")
        }
    }
}
