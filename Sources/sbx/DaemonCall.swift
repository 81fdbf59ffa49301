import ArgumentParser
import SBXJSON
import SandboxProtocol

/// The options every daemon command takes.
struct DaemonOptions: ParsableArguments {
    @Flag(name: .long, help: "Print the result (or the error) as one JSON object on stdout.")
    var json = false

    @Option(name: .long, help: "sandboxd's socket (default: $SBX_SOCKET, else \(SocketPath.defaultPath)).")
    var socket: String?

    var client: DaemonClient { DaemonClient(json: json, socket: socket) }
}

/// Talks to sandboxd for one command and prints what comes back. A plain value (not a parsed
/// command), so the hand parser of the common command lines can use it too.
struct DaemonClient {
    var json = false
    var socket: String?

    /// Calls `method` on the daemon and returns its result. On an error it prints it (the error
    /// object on stdout with --json, one `sbx:` line on stderr without) and throws the exit status:
    /// 3 when another branch won (`conflict`, `stale`), 1 otherwise.
    func call(_ method: Method, _ params: [(String, JSON)] = []) throws(ExitCode) -> JSON {
        let path = SocketPath.resolve(option: socket)
        let outcome: Result<JSON, RPCError>
        do throws(ClientError) {
            outcome = try SandboxClient(socketPath: path).call(method, .object(params))
        } catch {
            fail(RPCError(code: -32000, message: error.description, data: .object([
                ("kind", .string(Self.clientKind(error))), ("socket", .string(path)),
            ])))
            throw ExitCode(1)
        }
        switch outcome {
        case .success(let result): return result
        case .failure(let error):
            fail(error)
            throw ExitCode(Self.exitStatus(for: error))
        }
    }

    private func fail(_ error: RPCError) {
        if json { printOut(error.json.text) } else { complain(error.message) }
    }

    /// 3 when the branch lost to a sibling's commit: `conflict` (its commit was refused) and
    /// `stale` (it was invalidated, so anything else on it is refused): a harness handles both alike.
    static func exitStatus(for error: RPCError) -> Int32 {
        switch error.kind {
        case .conflict?, .stale?: return 3
        default: return 1
        }
    }

    /// The `data.kind` of an error that happened on our side of the socket.
    static func clientKind(_ error: ClientError) -> String {
        if case .unreachable = error { return "unreachable" }
        return ErrorKind.internal.rawValue
    }

    /// Prints `result` compactly with --json; otherwise runs `human`.
    func show(_ result: JSON, _ human: () -> Void) {
        if json { printOut(result.text) } else { human() }
    }
}

extension JSON {
    /// A scalar as text for human output; "-" for null or missing.
    var display: String {
        switch self {
        case .string(let s): return s
        case .int(let i): return String(i)
        case .bool(let b): return b ? "yes" : "no"
        case .null: return "-"
        default: return text
        }
    }
}

extension Optional where Wrapped == JSON {
    var display: String { self?.display ?? "-" }
}

/// Lines of columns padded to the widest cell (the last column is not padded).
func table(_ rows: [[String]]) -> String {
    guard let columns = rows.map(\.count).max() else { return "" }
    var widths = [Int](repeating: 0, count: columns)
    for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
    return rows.map { row in
        row.enumerated().map { i, cell in
            i == row.count - 1 ? cell : cell + String(repeating: " ", count: widths[i] - cell.count + 2)
        }.joined().trimmingTrailingSpaces()
    }.joined(separator: "\n")
}

private extension String {
    func trimmingTrailingSpaces() -> String {
        var s = self
        while s.last == " " { s.removeLast() }
        return s
    }
}
