// Files through a branch's path, driven by sbx: isolation until commit, diff, abort. These need
// the BranchFS FUSE view; until `path` is a directory they skip with the reason printed.
import Foundation
import SBXJSON
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class BranchViewTests: DaemonTestCase {

    /// Forks one branch and returns its id and path, or skips when the view is not served yet.
    private func branchWithView() throws -> (id: String, path: String) {
        try startDaemon()
        let id = try XCTUnwrap(try createBranches(1).first)
        let path = try XCTUnwrap(try result("branch.info", [("branch", .string(id))])["path"]?.stringValue)
        guard let isDirectory = try isDirectory(path) else {
            XCTFail("the branch view \(path) did not answer stat within 10 s: the FUSE server is stuck (connection aborted)")
            throw HarnessFailure("branch view hung")
        }
        guard isDirectory else {
            print("SKIP \(name): branch path \(path) is not a directory: BranchFS does not serve branch views yet")
            throw XCTSkip("BranchFS does not serve branch views yet (\(path) is not a directory)")
        }
        return (id, path)
    }

    private func write(_ path: String, _ text: String) throws { try text.write(toFile: path, atomically: false, encoding: .utf8) }
    private func read(_ path: String) -> String? { try? String(contentsOfFile: path, encoding: .utf8) }

    func testFilesWrittenInABranchReachTheWorkspaceOnlyOnCommit() throws {
        try write(workspace + "/kept.txt", "original\n")
        let (id, view) = try branchWithView()
        XCTAssertEqual(read(view + "/kept.txt"), "original\n", "a branch starts as its parent")
        try write(view + "/new.txt", "from the branch\n")
        XCTAssertNil(read(workspace + "/new.txt"), "the workspace does not see the branch's write before commit")

        let r = try sbx(["branch", "commit", id])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.hasPrefix("committed \(id) into main"), r.out)
        XCTAssertEqual(read(workspace + "/new.txt"), "from the branch\n", "commit writes the workspace")
        XCTAssertEqual(read(workspace + "/kept.txt"), "original\n")
    }

    func testDiffListsAddedModifiedAndDeletedPaths() throws {
        try write(workspace + "/a.txt", "a\n")
        try write(workspace + "/b.txt", "b\n")
        let (id, view) = try branchWithView()
        try write(view + "/a.txt", "changed\n")
        XCTAssertEqual(unlink(view + "/b.txt"), 0, "delete through the view: errno \(errno)")
        try write(view + "/c.txt", "c\n")

        let r = try sbx(["branch", "diff", id])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(r.outLines, ["M a.txt", "D b.txt", "A c.txt"])
        let json = try sbxJSON(["branch", "diff", id])
        XCTAssertEqual(json["changes"]?.arrayValue?.first, .object([("path", .string("a.txt")), ("change", .string("modified"))]))
    }

    func testAbortedBranchLeavesTheWorkspaceUntouched() throws {
        try write(workspace + "/a.txt", "a\n")
        let (id, view) = try branchWithView()
        try write(view + "/a.txt", "scribbled\n")
        try write(view + "/junk.txt", "junk\n")
        XCTAssertEqual(try sbx(["branch", "abort", id]).status, 0)
        XCTAssertEqual(read(workspace + "/a.txt"), "a\n")
        XCTAssertNil(read(workspace + "/junk.txt"))
    }

    func testLosingSiblingCannotWriteThroughItsPath() throws {
        let (winner, _) = try branchWithView()
        let loser = try XCTUnwrap(try createBranches(1).first)
        let loserView = try XCTUnwrap(try result("branch.info", [("branch", .string(loser))])["path"]?.stringValue)
        XCTAssertEqual(try sbx(["branch", "commit", winner]).status, 0)
        let fd = open(loserView + "/late.txt", O_WRONLY | O_CREAT, 0o644)
        let e = errno
        if fd >= 0 { close(fd) }
        XCTAssertLessThan(fd, 0, "an invalidated branch's view refuses writes")
        XCTAssertTrue([ESTALE, ENOENT, EROFS].contains(e), "errno \(e): \(String(cString: strerror(e)))")
    }
}
