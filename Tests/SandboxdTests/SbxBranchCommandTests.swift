// The command-line contract of `sbx branch ...` and `sbx status` against a real sandboxd:
// human and --json output, and exit statuses 0 (ok), 1 (error), 2 (usage), 3 (another branch won).
import Foundation
import SBXJSON
import XCTest

final class SbxBranchCommandTests: DaemonTestCase {

    // MARK: - create, list, info, path

    func testCreatePrintsOneIdTabPathLinePerBranch() throws {
        try startDaemon()
        let r = try sbx(["branch", "create", "--count", "3"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(r.err, "")
        XCTAssertEqual(r.outLines.count, 3, r.out)
        var ids = Set<String>()
        for line in r.outLines {
            let parts = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            XCTAssertEqual(parts.count, 2, "expected 'id<TAB>path': \(line)")
            guard parts.count == 2 else { continue }
            ids.insert(parts[0])
            XCTAssertEqual(parts[1], state + "/mnt/" + parts[0], "the path is the branch's directory under the mount")
        }
        XCTAssertEqual(ids.count, 3, "three distinct ids")
        XCTAssertEqual(Set(try branchesByID().keys), ids.union(["main"]))
    }

    func testCreateJSONPrintsBranchesWithIdAndPath() throws {
        try startDaemon()
        let out = try sbxJSON(["branch", "create", "--count", "2"])
        let branches = try XCTUnwrap(out["branches"]?.arrayValue, out.text)
        XCTAssertEqual(branches.count, 2)
        for b in branches {
            XCTAssertEqual(b.objectValue?.map(\.0), ["id", "path"], "create's branch objects are {id, path}: \(b.text)")
        }
    }

    func testCreateFromABranchNestsAndFreezesTheParent() throws {
        try startDaemon()
        let parent = try XCTUnwrap(try createBranches(1).first)
        let r = try sbx(["branch", "create", "--from", parent])
        XCTAssertEqual(r.status, 0, r.err)
        let child = String(r.out.split(separator: "\t").first ?? "")
        let info = try sbxJSON(["branch", "info", child])
        XCTAssertEqual(info["parent"], .string(parent))
        let parentInfo = try sbxJSON(["branch", "info", parent])
        XCTAssertEqual(parentInfo["frozen"], .bool(true), "a branch with a live child is frozen")
        XCTAssertEqual(parentInfo["children"], .array([.string(child)]))
    }

    func testListShowsEveryBranchWithItsState() throws {
        try startDaemon()
        let ids = try createBranches(2)
        let r = try sbx(["branch", "list"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(r.outLines.first?.split(separator: " ").map(String.init), ["ID", "PARENT", "STATE", "EPOCH", "FORK", "NOTE"])
        XCTAssertEqual(r.outLines.count, 4, "header, main and two branches: \(r.out)")
        for id in ids {
            let row = try XCTUnwrap(r.outLines.first { $0.hasPrefix(id + " ") }, r.out)
            XCTAssertEqual(row.split(separator: " ").map(String.init), [id, "main", "active", "0", "0"])
        }
        XCTAssertTrue(r.outLines.contains { $0.hasPrefix("main ") && $0.hasSuffix("frozen") }, r.out)

        let json = try sbxJSON(["branch", "list"])
        let branches = try XCTUnwrap(json["branches"]?.arrayValue)
        XCTAssertEqual(branches.compactMap { $0["id"]?.stringValue }, ["main"] + ids, "in creation order, main first")
        for b in branches {
            for key in ["id", "parent", "state", "fork_epoch", "epoch", "path", "frozen"] {
                XCTAssertNotNil(b[key], "branch object lacks \(key): \(b.text)")
            }
        }
    }

    func testInfoJSONIsTheBranchObjectPlusChildren() throws {
        try startDaemon()
        let id = try XCTUnwrap(try createBranches(1).first)
        let info = try sbxJSON(["branch", "info", id])
        XCTAssertEqual(info["id"], .string(id))
        XCTAssertEqual(info["parent"], .string("main"))
        XCTAssertEqual(info["state"], .string("active"))
        XCTAssertEqual(info["fork_epoch"], .int(0))
        XCTAssertEqual(info["epoch"], .int(0))
        XCTAssertEqual(info["frozen"], .bool(false))
        XCTAssertEqual(info["path"], .string(state + "/mnt/" + id))
        XCTAssertEqual(info["children"], .array([]))
        XCTAssertEqual(info["external_changes"], .array([]))

        let human = try sbx(["branch", "info", id])
        XCTAssertEqual(human.status, 0, human.err)
        XCTAssertTrue(human.outLines.contains("state       active"), human.out)
    }

    func testInfoNamesThePathsChangedOutsideTheBranchSinceItsFork() throws {
        try startDaemon()
        let id = try branchWithAnExternalChange(at: "README")
        let human = try sbx(["branch", "info", id])
        XCTAssertEqual(human.status, 0, human.err)
        XCTAssertEqual(human.outLines.last, "external_changes  README", human.out)
        XCTAssertEqual(try sbxJSON(["branch", "info", id])["external_changes"], .array([.string("README")]))
    }

    func testPathPrintsOnlyThePath() throws {
        try startDaemon()
        let id = try XCTUnwrap(try createBranches(1).first)
        let r = try sbx(["branch", "path", id])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(r.out, state + "/mnt/" + id + "\n")
    }

    func testDiffOfAnUntouchedBranchIsEmpty() throws {
        try startDaemon()
        let id = try XCTUnwrap(try createBranches(1).first)
        let r = try sbx(["branch", "diff", id])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(r.out, "")
        XCTAssertEqual(try sbxJSON(["branch", "diff", id]), .object([("changes", .array([]))]))
    }

    // MARK: - commit and abort

    func testCommitPrintsWhatWasCommittedIntoWhereAndTheInvalidatedSiblings() throws {
        try startDaemon()
        let ids = try createBranches(3)
        let r = try sbx(["branch", "commit", ids[0]])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(r.out, "committed \(ids[0]) into main (epoch 1); invalidated \(ids[1]) \(ids[2])\n")

        let lone = try XCTUnwrap(try createBranches(1).first)
        let json = try sbxJSON(["branch", "commit", lone])
        XCTAssertEqual(json["committed"], .string(lone))
        XCTAssertEqual(json["into"], .string("main"))
        XCTAssertEqual(json["epoch"], .int(2))
        XCTAssertEqual(json["invalidated"], .array([]))
        XCTAssertNotNil(json["changes"]?.intValue)
    }

    func testSecondSiblingCommitExitsThreeAndNamesTheWinner() throws {
        try startDaemon()
        let ids = try createBranches(2)
        XCTAssertEqual(try sbx(["branch", "commit", ids[0]]).status, 0)

        let loser = try sbx(["branch", "commit", ids[1]])
        XCTAssertEqual(loser.status, 3, "conflict exits 3: \(loser.err)")
        XCTAssertEqual(loser.out, "")
        XCTAssertEqual(loser.errLines.count, 1, loser.err)
        XCTAssertTrue(loser.err.hasPrefix("sbx: "), loser.err)
        XCTAssertTrue(loser.err.contains(ids[0]), "the message names the winner: \(loser.err)")

        let json = try sbx(["branch", "commit", ids[1], "--json"])
        XCTAssertEqual(json.status, 3)
        let error = try json.json()
        XCTAssertEqual(error["code"], .int(-32002))
        XCTAssertEqual(error["data"]?["kind"], .string("conflict"))
        XCTAssertEqual(error["data"]?["winner"], .string(ids[0]))
        XCTAssertEqual(error["data"]?["branch"], .string(ids[1]))
    }

    func testCommitOverAnExternalChangeExitsThreeNamingThePath() throws {
        try startDaemon()
        let id = try branchWithAnExternalChange(at: "README")
        let r = try sbx(["branch", "commit", id])
        XCTAssertEqual(r.status, 3, "conflict exits 3: \(r.err)")
        XCTAssertEqual(r.out, "")
        XCTAssertEqual(r.errLines.count, 1, r.err)
        XCTAssertTrue(r.err.hasPrefix("sbx: "), r.err)
        XCTAssertTrue(r.err.contains("README"), "the message names the path: \(r.err)")

        let json = try sbx(["branch", "commit", id, "--json"])
        XCTAssertEqual(json.status, 3)
        let error = try json.json()
        XCTAssertEqual(error["data"]?["kind"], .string("conflict"))
        XCTAssertEqual(error["data"]?["external_changes"], .array([.string("README")]))
        XCTAssertEqual(try branchesByID()[id]?["state"], .string("active"))
    }

    func testAnythingElseOnAnInvalidatedBranchIsStaleAndExitsThree() throws {
        try startDaemon()
        let ids = try createBranches(2)
        XCTAssertEqual(try sbx(["branch", "commit", ids[0]]).status, 0)
        let r = try sbx(["branch", "abort", ids[1], "--json"])
        XCTAssertEqual(r.status, 3, r.out + r.err)
        XCTAssertEqual(try r.json()["data"]?["kind"], .string("stale"))
    }

    func testAbortThrowsAwayTheBranchAndItsDescendants() throws {
        try startDaemon()
        let parent = try XCTUnwrap(try createBranches(1).first)
        let child = try XCTUnwrap(try createBranches(1, from: parent).first)
        let r = try sbx(["branch", "abort", parent])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(r.out, "aborted \(parent)\n")
        let all = try branchesByID()
        XCTAssertEqual(all[parent]?["state"], .string("aborted"))
        XCTAssertEqual(all[child]?["state"], .string("aborted"))
        XCTAssertEqual(try sbxJSON(["branch", "abort", try XCTUnwrap(try createBranches(1).first)])["aborted"]?.stringValue?.isEmpty, false)
    }

    // MARK: - errors and exit statuses

    func testUnknownBranchExitsOneWithOneStderrLine() throws {
        try startDaemon()
        let r = try sbx(["branch", "info", "nope"])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.out, "")
        XCTAssertEqual(r.err, "sbx: no branch 'nope'\n")

        let json = try sbx(["branch", "info", "nope", "--json"])
        XCTAssertEqual(json.status, 1)
        XCTAssertEqual(json.err, "", "with --json the error goes to stdout only")
        let error = try json.json()
        XCTAssertEqual(error["code"], .int(-32001))
        XCTAssertEqual(error["data"]?["kind"], .string("not_found"))
        XCTAssertEqual(error["data"]?["branch"], .string("nope"))
    }

    func testUsageErrorsExitTwoWithOneLine() throws {
        try startDaemon()
        for args in [["branch", "info"], ["branch", "create", "--count", "0"], ["branch", "create", "--count", "many"],
                     ["branch", "frobnicate", "x"], ["status", "--bogus"], ["branch", "commit", "a", "b"]] {
            let r = try sbx(args)
            XCTAssertEqual(r.status, 2, "sbx \(args): \(r.err)")
            XCTAssertEqual(r.errLines.count, 1, "sbx \(args): \(r.err)")
            XCTAssertTrue(r.err.hasPrefix("sbx: "), "sbx \(args): \(r.err)")
        }
        XCTAssertEqual(try branchesByID().count, 1, "no usage error reached the daemon")
    }

    func testUnreachableDaemonExitsOneWithOneLineSayingHowToStartIt() throws {
        let missing = root + "/nobody.sock"
        let r = try sbx(["status", "--socket", missing])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.errLines.count, 1, r.err)
        XCTAssertTrue(r.err.hasPrefix("sbx: cannot reach sandboxd at \(missing): "), r.err)
        XCTAssertTrue(r.err.contains("start it with: sandboxd --workspace DIR --socket \(missing)"), r.err)

        let json = try sbx(["branch", "list", "--json", "--socket", missing])
        XCTAssertEqual(json.status, 1)
        let error = try json.json()
        XCTAssertEqual(error["data"]?["kind"], .string("unreachable"))
        XCTAssertEqual(error["data"]?["socket"], .string(missing))
    }

    func testSocketComesFromTheFlagThenTheEnvironment() throws {
        try startDaemon()
        let bogus = root + "/bogus.sock"
        XCTAssertEqual(try sbx(["status"]).status, 0, "$SBX_SOCKET is used")
        XCTAssertEqual(try sbx(["status", "--socket", socket], environment: ["SBX_SOCKET": bogus]).status, 0, "--socket wins over $SBX_SOCKET")
        let r = try sbx(["status"], environment: ["SBX_SOCKET": bogus])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.err.contains(bogus), r.err)
    }

    // MARK: - status

    func testStatusReportsVersionPathsBranchesAndCounters() throws {
        let daemon = try startDaemon()
        _ = try createBranches(2)
        let s = try sbxJSON(["status"])
        XCTAssertEqual(s["pid"], .int(Int64(daemon.pid)))
        XCTAssertNotNil(s["version"]?.stringValue)
        XCTAssertEqual(s["workspace"], .string(workspace))
        XCTAssertEqual(s["state"], .string(state))
        XCTAssertEqual(s["mount"], .string(state + "/mnt"))
        XCTAssertEqual(s["socket"], .string(socket))
        XCTAssertEqual(s["branches"]?["total"], .int(3))
        XCTAssertEqual(s["branches"]?["active"], .int(3))
        XCTAssertEqual(s["jails"], .int(0))
        XCTAssertEqual(s["shells"], .int(0))
        XCTAssertEqual(s["counters"]?["creates"], .int(2))
        XCTAssertGreaterThanOrEqual(s["counters"]?["requests"]?.intValue ?? 0, 1)
        XCTAssertGreaterThanOrEqual(s["uptime_ms"]?.intValue ?? -1, 0)

        let human = try sbx(["status"])
        XCTAssertEqual(human.status, 0, human.err)
        XCTAssertTrue(human.out.hasPrefix("sandboxd "), human.out)
        XCTAssertTrue(human.out.contains("branches   3 (active 3"), human.out)
    }
}
