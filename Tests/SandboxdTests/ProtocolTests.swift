// The wire contract of DESIGN §6 over a raw socket: JSON-RPC 2.0 framing and error codes,
// first commit wins, idempotency keys, and clients that misbehave or vanish. After every abuse
// the daemon must still answer `status`.
import Foundation
import SBXJSON
import SandboxProtocol
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class ProtocolTests: DaemonTestCase {

    override func setUpWithError() throws {
        try super.setUpWithError()
        try startDaemon()
    }

    /// The error object of a response, checked to be a JSON-RPC 2.0 error response with `id`.
    private func error(_ response: JSON, id: JSON, file: StaticString = #filePath, line: UInt = #line) -> JSON {
        XCTAssertEqual(response["jsonrpc"], .string("2.0"), response.text, file: file, line: line)
        XCTAssertEqual(response["id"], id, response.text, file: file, line: line)
        XCTAssertNil(response["result"], response.text, file: file, line: line)
        return response["error"] ?? .null
    }

    // MARK: - branches

    func testFirstCommitWinsOverTheRawSocket() throws {
        let ids = try createBranches(2)
        let won = try result("branch.commit", [("branch", .string(ids[0]))])
        XCTAssertEqual(won["committed"], .string(ids[0]))
        XCTAssertEqual(won["into"], .string("main"))
        XCTAssertEqual(won["epoch"], .int(1))
        XCTAssertEqual(won["invalidated"], .array([.string(ids[1])]))

        guard case .failure(let lost) = try call("branch.commit", [("branch", .string(ids[1]))]) else {
            return XCTFail("the second sibling's commit succeeded")
        }
        XCTAssertEqual(lost.code, -32002)
        XCTAssertEqual(lost.kind, .conflict)
        XCTAssertEqual(lost.data["winner"], .string(ids[0]))
        XCTAssertTrue(lost.message.contains(ids[0]), lost.message)
        let all = try branchesByID()
        XCTAssertEqual(all[ids[0]]?["state"], .string("committed"))
        XCTAssertEqual(all[ids[1]]?["state"], .string("invalidated"))
        XCTAssertEqual(all["main"]?["epoch"], .int(1))
    }

    func testFrozenParentCannotCommitAndSaysWhichChildrenFreezeIt() throws {
        let parent = try XCTUnwrap(try createBranches(1).first)
        let child = try XCTUnwrap(try createBranches(1, from: parent).first)
        guard case .failure(let e) = try call("branch.commit", [("branch", .string(parent))]) else {
            return XCTFail("a parent with a live child committed")
        }
        XCTAssertEqual(e.code, -32004)
        XCTAssertEqual(e.kind, .frozen)
        XCTAssertEqual(e.data["children"], .array([.string(child)]))
    }

    func testACommitOverAnExternalChangeIsAConflictNamingThePathsAndTheBranchLivesOn() throws {
        let id = try branchWithAnExternalChange(at: "README")
        guard case .failure(let e) = try call("branch.commit", [("branch", .string(id))]) else {
            return XCTFail("a commit over an external change succeeded")
        }
        XCTAssertEqual(e.code, -32002)
        XCTAssertEqual(e.kind, .conflict)
        XCTAssertEqual(e.data["branch"], .string(id))
        XCTAssertEqual(e.data["external_changes"], .array([.string("README")]))
        XCTAssertNil(e.data["winner"], "no sibling won: \(e.data.text)")
        XCTAssertTrue(e.message.contains("README"), e.message)
        let info = try result("branch.info", [("branch", .string(id))])
        XCTAssertEqual(info["state"], .string("active"))
        XCTAssertEqual(info["external_changes"], .array([.string("README")]))
        XCTAssertEqual(try String(contentsOfFile: workspace + "/README", encoding: .utf8), "from the host\n")
    }

    // MARK: - framing and JSON-RPC errors

    func testMalformedJSONIsAParseErrorAndTheConnectionStaysUsable() throws {
        let c = try client()
        let e = error(try exchange(c, "{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": \n"), id: .null)
        XCTAssertEqual(e["code"], .int(-32700))
        XCTAssertEqual(e["data"]?["kind"], .string("invalid_request"))
        let e2 = error(try exchange(c, "{nope\n"), id: .null)
        XCTAssertEqual(e2["code"], .int(-32700))
        let ok = try exchange(c, #"{"jsonrpc":"2.0","id":2,"method":"status"}"# + "\n")
        XCTAssertNotNil(ok["result"]?["pid"], "the same connection still works: \(ok.text)")
    }

    func testANonObjectRequestIsAnInvalidRequest() throws {
        let c = try client()
        for text in ["42", "\"status\"", "null", "true", "[]", #"[{"jsonrpc":"2.0","id":1,"method":"status"}]"#] {
            let e = error(try exchange(c, text + "\n"), id: .null)
            XCTAssertEqual(e["code"], .int(-32600), text)
            XCTAssertEqual(e["data"]?["kind"], .string("invalid_request"), text)
        }
        assertDaemonAnswers("after non-object requests")
    }

    func testMissingVersionOrMethodIsAnInvalidRequestAnsweredUnderItsId() throws {
        let c = try client()
        let cases: [(String, JSON)] = [
            (#"{"id":7,"method":"status"}"#, .int(7)),
            (#"{"jsonrpc":"1.0","id":8,"method":"status"}"#, .int(8)),
            (#"{"jsonrpc":"2.0","id":"nine"}"#, .string("nine")),
            (#"{"jsonrpc":"2.0","id":10,"method":42}"#, .int(10)),
            (#"{"jsonrpc":"2.0","id":{"no":1},"method":"status"}"#, .null),
            (#"{"jsonrpc":"2.0","id":11,"method":"status","params":"all"}"#, .int(11)),
        ]
        for (text, id) in cases {
            let e = error(try exchange(c, text + "\n"), id: id)
            XCTAssertEqual(e["code"], .int(-32600), text)
        }
    }

    func testUnknownMethodIsMethodNotFound() throws {
        let e = error(try exchange(try client(), #"{"jsonrpc":"2.0","id":3,"method":"branch.explode","params":{}}"# + "\n"), id: .int(3))
        XCTAssertEqual(e["code"], .int(-32601))
        XCTAssertEqual(e["data"]?["method"], .string("branch.explode"))
    }

    func testWrongParamTypesAndOutOfRangeValuesAreInvalidParamsNamingTheParam() throws {
        let c = try client()
        let cases: [(String, String)] = [
            (#""method":"branch.info","params":{"branch":5}"#, "branch"),
            (#""method":"branch.commit","params":{"branch":null}"#, "branch"),
            (#""method":"branch.create","params":{"count":"2"}"#, "count"),
            (#""method":"branch.create","params":{"count":1.5}"#, "count"),
            (#""method":"branch.create","params":{"count":0}"#, "count"),
            (#""method":"branch.create","params":{"count":257}"#, "count"),
            (#""method":"branch.create","params":{"from":["main"]}"#, "from"),
            (#""method":"branch.list","params":["main"]"#, "params"),
            (#""method":"branch.create","params":{"idempotency_key":17}"#, "idempotency_key"),
        ]
        for (i, (body, param)) in cases.enumerated() {
            let e = error(try exchange(c, #"{"jsonrpc":"2.0","id":\#(i),\#(body)}"# + "\n"), id: .int(Int64(i)))
            XCTAssertEqual(e["code"], .int(-32602), body)
            XCTAssertEqual(e["data"]?["kind"], .string("invalid_params"), body)
            XCTAssertEqual(e["data"]?["param"], .string(param), body)
            XCTAssertTrue(e["message"]?.stringValue?.contains(param) == true, "the message names \(param): \(e.text)")
        }
        XCTAssertEqual(try branchesByID().count, 1, "no refused create made a branch")
    }

    func testMissingRequiredParamIsInvalidParams() throws {
        for method in ["branch.info", "branch.diff", "branch.commit", "branch.abort"] {
            guard case .failure(let e) = try call(method) else { XCTFail("\(method) without branch succeeded"); continue }
            XCTAssertEqual(e.code, -32602, method)
            XCTAssertEqual(e.data["param"], .string("branch"), method)
            XCTAssertTrue(e.message.contains("missing param 'branch'"), e.message)
        }
    }

    func testUnknownParamIsRefusedByName() throws {
        guard case .failure(let e) = try call("branch.create", [("form", .string("main"))]) else {
            return XCTFail("a misspelt param was accepted")
        }
        XCTAssertEqual(e.code, -32602)
        XCTAssertEqual(e.data["param"], .string("form"))
        XCTAssertEqual(try branchesByID().count, 1)
    }

    func testNotificationsAreCarriedOutButGetNoResponse() throws {
        let c = try client()
        try c.sendRaw(Array((#"{"jsonrpc":"2.0","method":"branch.create","params":{"count":2}}"# + "\n"
            + #"{"jsonrpc":"2.0","method":"no.such.method"}"# + "\n").utf8))
        let reply = try exchange(c, #"{"jsonrpc":"2.0","id":"after","method":"status"}"# + "\n")
        XCTAssertEqual(reply["id"], .string("after"), "the first line back answers the request, not the notifications")
        XCTAssertEqual(try branchesByID().count, 3, "the notification's create was carried out")
    }

    func testRequestIdsAreEchoedVerbatim() throws {
        let c = try client()
        for id in [#""abc""#, "0", "-5", "1099511627776", #""""#, "null"] {
            let reply = try exchange(c, #"{"jsonrpc":"2.0","id":\#(id),"method":"status"}"# + "\n")
            XCTAssertEqual(reply["id"], try JSON.parse(id), id)
            XCTAssertNotNil(reply["result"], id)
        }
    }

    func testPipelinedRequestsAreAnsweredInOrder() throws {
        let c = try client()
        let lines = (1...20).map { #"{"jsonrpc":"2.0","id":\#($0),"method":"branch.list"}"# + "\n" }.joined()
        try c.sendRaw(Array(lines.utf8))
        for id in 1...20 {
            let reply = try JSON.parse(String(decoding: try XCTUnwrap(try c.readLine()), as: UTF8.self))
            XCTAssertEqual(reply["id"], .int(Int64(id)))
        }
    }

    func testCRLFAndBlankLinesAreTolerated() throws {
        let c = try client()
        try c.sendRaw(Array("\n   \n".utf8))
        let reply = try exchange(c, #"{"jsonrpc":"2.0","id":1,"method":"status"}"# + "\r\n")
        XCTAssertNotNil(reply["result"], reply.text)
    }

    // MARK: - limits and vanishing clients

    func testALineJustUnderTheLimitIsRead() throws {
        let head = #"{"jsonrpc":"2.0","id":1,"method":"status","params":{"pad":""#, tail = "\"}}"
        let pad = String(repeating: "x", count: NDJSON.maxRequestBytes - head.utf8.count - tail.utf8.count)
        let e = error(try exchange(try client(), head + pad + tail + "\n"), id: .int(1))
        XCTAssertEqual(e["data"]?["param"], .string("pad"), "a 1 MiB line is read and answered (here: pad is no param of status)")
    }

    func testOversizedLineGetsALimitErrorThenTheConnectionCloses() throws {
        let c = try client()
        let line = #"{"jsonrpc":"2.0","id":1,"method":"status","params":{"pad":""# + String(repeating: "x", count: NDJSON.maxRequestBytes) + "\"}}\n"
        // The daemon stops reading past the limit and hangs up, so our write may fail: that is fine.
        try? c.sendRaw(Array(line.utf8))
        let reply = try JSON.parse(String(decoding: try XCTUnwrap(try c.readLine(), "no answer to an oversized line"), as: UTF8.self))
        let e = error(reply, id: .null)
        XCTAssertEqual(e["code"], .int(-32600))
        XCTAssertEqual(e["data"]?["kind"], .string("limit"))
        XCTAssertEqual(e["data"]?["max_bytes"], .int(Int64(NDJSON.maxRequestBytes)))
        // Then the connection is closed: end of stream, or a reset because our bytes were left unread.
        XCTAssertNil(try? c.readLine() ?? nil, "the connection stays open after an oversized line")
        assertDaemonAnswers("after an oversized line")
    }

    func testClientClosingInTheMiddleOfALineLeavesTheDaemonServing() throws {
        do {
            let c = try client()
            try c.sendRaw(Array(#"{"jsonrpc":"2.0","id":1,"method":"branch.cre"#.utf8))
        }  // closed here, half a line sent
        do {
            let c = try client()
            try c.sendRaw(Array(#"{"jsonrpc":"2.0","id":1,"method":"branch.create"}"#.utf8))
            c.shutdownWrite()  // a whole request without its newline, then end of stream
            XCTAssertNotNil(try c.readLine(), "a final request without newline is still answered")
        }
        assertDaemonAnswers("after clients closed mid-line")
    }

    func testClientClosingBeforeReadingItsAnswersLeavesTheDaemonServing() throws {
        do {
            let c = try client()
            let lines = (1...50).map { #"{"jsonrpc":"2.0","id":\#($0),"method":"branch.create"}"# + "\n" }.joined()
            try c.sendRaw(Array(lines.utf8))
        }  // closed without reading a single answer
        assertDaemonAnswers("after a client vanished with 50 requests in flight")
        let made = try branchesByID().count - 1
        XCTAssertGreaterThanOrEqual(made, 1, "the first request was carried out")
        XCTAssertLessThanOrEqual(made, 50)
    }

    func testManyConcurrentClientsAreAllAnswered() throws {
        let socket = self.socket
        let made = ResultsBox()
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            for _ in 0..<10 {
                do {
                    let r = try SandboxClient(socketPath: socket).call(.branchCreate)
                    if case .success(let v) = r, let id = v["branches"]?.arrayValue?.first?["id"]?.stringValue { made.add(id) }
                    else { made.fail("\(r)") }
                } catch { made.fail("\(error)") }
            }
        }
        XCTAssertEqual(made.failures, [])
        XCTAssertEqual(Set(made.ids).count, 80, "80 creates from 8 clients, 80 distinct branches")
        XCTAssertEqual(try branchesByID().count, 81)
    }

    // MARK: - idempotency

    func testIdempotencyKeyReturnsTheFirstAnswerAndCreatesOnce() throws {
        let params: [(String, JSON)] = [("count", .int(2)), ("idempotency_key", .string("create-1"))]
        let first = try exchange(try client(), Request(id: .int(1), method: "branch.create", params: .object(params)).json.text + "\n")
        let retry = try exchange(try client(), Request(id: .string("retry"), method: "branch.create", params: .object(params.reversed())).json.text + "\n")
        XCTAssertNotNil(first["result"], first.text)
        XCTAssertEqual(retry["result"], first["result"], "the retry gets the first answer verbatim")
        XCTAssertEqual(retry["id"], .string("retry"), "under its own id")
        XCTAssertEqual(try branchesByID().count, 3, "two branches, made once")

        let other = try result("branch.create", [("idempotency_key", .string("create-2"))])
        XCTAssertNotEqual(other, first["result"], "another key is another call")
        XCTAssertEqual(try auditRecords().filter { $0["replayed"] == .bool(true) }.count, 1, "the audit log marks the replay")
    }

    func testRetriedCommitWithTheSameKeyGetsTheFirstAnswerNotAnError() throws {
        let id = try XCTUnwrap(try createBranches(1).first)
        let params: [(String, JSON)] = [("branch", .string(id)), ("idempotency_key", .string("commit-\(id)"))]
        let first = try result("branch.commit", params)
        XCTAssertEqual(try result("branch.commit", params), first, "not 'branch is committed'")
        guard case .failure = try call("branch.commit", [("branch", .string(id))]) else {
            return XCTFail("without the key a second commit of a committed branch is refused")
        }
    }

    func testIdempotencyKeyReusedWithOtherParamsIsRefused() throws {
        _ = try result("branch.create", [("count", .int(1)), ("idempotency_key", .string("k"))])
        guard case .failure(let e) = try call("branch.create", [("count", .int(2)), ("idempotency_key", .string("k"))]) else {
            return XCTFail("a key reused with other params was answered")
        }
        XCTAssertEqual(e.code, -32602)
        XCTAssertEqual(e.data["param"], .string("idempotency_key"))
        XCTAssertEqual(try branchesByID().count, 2)
    }
}

/// Collects results from concurrent clients.
private final class ResultsBox: @unchecked Sendable {
    private let lock = NSLock()
    private var made: [String] = []
    private var failed: [String] = []
    func add(_ id: String) { lock.withLock { made.append(id) } }
    func fail(_ why: String) { lock.withLock { failed.append(why) } }
    var ids: [String] { lock.withLock { made } }
    var failures: [String] { lock.withLock { failed } }
}
