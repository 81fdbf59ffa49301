import XCTest
@testable import BranchFS

/// DESIGN §5: external changes to the workspace while branches exist are detected and reported,
/// never silently mixed in. "External" is anything that writes the workspace directory itself
/// (here: this test, as a host tool would), not through a branch.
final class ExternalChangeTests: BranchFSTestCase {
    func testAnExternalEditOfAFileTheBranchModifiedRefusesTheCommitAndKeepsBoth() throws {
        let a = try forkWriting("README", "from a\n")
        try put(workspace + "/README", "from the host\n")
        assertCommitRefused(a, for: ["README"])
        XCTAssertEqual(get(workspace + "/README"), "from the host\n", "the workspace keeps the external version")
        XCTAssertEqual(try fs.info(a).state, .active)
        XCTAssertEqual(get(path(a) + "/README"), "from a\n", "the branch keeps its own")
        XCTAssertEqual(try fs.diff(a).map(\.path), ["README"])
    }

    func testAnExternalDeleteOfAFileTheBranchModifiedRefusesTheCommit() throws {
        let a = try forkWriting("src/main.c", "int main(void) { return 1; }\n")
        XCTAssertEqual(unlink(workspace + "/src/main.c"), 0)
        assertCommitRefused(a, for: ["src/main.c"])
        XCTAssertFalse(exists(workspace + "/src/main.c"), "the commit did not resurrect it")
        XCTAssertEqual(get(path(a) + "/src/main.c"), "int main(void) { return 1; }\n")
    }

    func testAnExternalEditInsideADirectoryTheBranchDeletedRefusesTheCommit() throws {
        let a = try branch()
        let p = path(a)
        XCTAssertEqual(unlink(p + "/docs/a/b/deep.txt"), 0)
        for dir in ["/docs/a/b", "/docs/a", "/docs"] { XCTAssertEqual(rmdir(p + dir), 0) }
        leaveTheForkTick()
        try put(workspace + "/docs/a/b/deep.txt", "edited in place by the host\n")
        assertCommitRefused(a, for: ["docs/a/b/deep.txt"])
        XCTAssertEqual(get(workspace + "/docs/a/b/deep.txt"), "edited in place by the host\n")
    }

    func testAnExternalChangeOfAnUnrelatedFileIsCommittedAlongside() throws {
        // forkWriting waits out the fork's tick: the host's changes below would be seen if they counted.
        let a = try forkWriting("src/main.c", "from a\n")
        try put(workspace + "/docs/a/b/deep.txt", "from the host\n")
        try put(workspace + "/src/host.c", "new beside a's file\n")
        XCTAssertEqual(try fs.externalChanges(a), [])
        _ = try fs.commit(a)
        assertWorkspace(["src/main.c": "from a\n", "docs/a/b/deep.txt": "from the host\n", "src/host.c": "new beside a's file\n"])
    }

    func testAFileTheBranchAddedToADirectoryThatChangedOutsideCountsAsChanged() throws {
        // Documented over-report: in the workspace, a file the branch added and one it modified
        // that was then deleted outside look alike (missing, in a directory that changed).
        let a = try forkWriting("src/added.c", "from a\n")
        try put(workspace + "/src/host.c", "from the host\n")
        assertCommitRefused(a, for: ["src/added.c"])
    }

    func testAForkRightAfterACommitDoesNotCountThatCommitAsExternal() throws {
        // No sleeps: a previous commit into main precedes the fork, however close.
        for round in 0..<3 {
            let a = try branch()
            try put(path(a) + "/README", "a \(round)\n")
            try put(path(a) + "/new-\(round).txt", "added by a\n")
            XCTAssertEqual(unlink(path(a) + "/src/util.c"), 0)
            _ = try fs.commit(a)
            let b = try branch()
            try put(path(b) + "/README", "b \(round)\n")
            try put(path(b) + "/new-\(round).txt", "changed by b\n")
            try put(path(b) + "/src/util.c", "recreated by b \(round)\n")
            _ = try fs.commit(b)
            assertWorkspace(["README": "b \(round)\n", "new-\(round).txt": "changed by b\n", "src/util.c": "recreated by b \(round)\n"])
        }
    }

    func testExternalChangesAreReportedBeforeTheCommitExceptOfFilesTheBranchOnlyRead() throws {
        let a = try branch()
        try put(path(a) + "/README", "from a\n")
        XCTAssertEqual(get(path(a) + "/src/util.c"), "int util;\n")
        XCTAssertEqual(try fs.externalChanges(a), [])
        leaveTheForkTick()
        try put(workspace + "/README", "from the host\n")
        try put(workspace + "/src/util.c", "int util = 1;\n")
        XCTAssertEqual(try fs.externalChanges(a), ["README"], "src/util.c is in the branch's lower layer only")
    }

    func testABranchRecordedWithoutAForkTimeStillLoadsAndCommitsUnchecked() throws {
        let a = try branch()
        try put(path(a) + "/README", "from a\n")
        fs.close()
        // The registry as a sandboxd before fork times wrote it.
        for file in [state + "/branches.json", state + "/branches.log"] where exists(file) {
            let text = try XCTUnwrap(get(file))
            try put(file, text.replacingOccurrences(of: #""fork_time_ns":[0-9]+,"#, with: "", options: .regularExpression))
        }
        fs = try BranchFS(workspace: workspace, stateDirectory: state)
        XCTAssertNil(try fs.info(a).forkTime)
        leaveTheForkTick()
        try put(workspace + "/README", "from the host\n")
        XCTAssertEqual(try fs.externalChanges(a), [], "unknown fork time: not checked")
        _ = try fs.commit(a)
        XCTAssertEqual(get(workspace + "/README"), "from a\n")
    }
}

/// The workspace on another filesystem than the state (tmpfs here): a commit stages inside the
/// workspace root, under a hidden `.sbx-staging-*` directory.
final class ExternalChangeAcrossFilesystemsTests: BranchFSTestCase {
    private lazy var otherFS = "/dev/shm/sbx-branchfs-ws-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    override var workspace: String { otherFS + "/ws" }

    override func seed() throws {
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: workspace, withIntermediateDirectories: true)
        guard !Committer.sameDevice(state, workspace) else { throw XCTSkip("/dev/shm and /tmp are one filesystem here") }
        try super.seed()
    }

    override func tearDownWithError() throws {
        try super.tearDownWithError()
        try? FileManager.default.removeItem(atPath: otherFS)
    }

    func testAForkRightAfterACommitDoesNotCountItsStagingAsExternal() throws {
        // The staging directory goes while the commit settles, which this widens: a fork
        // before that would see the workspace root change after it.
        fs.settleDelayForTesting = 30_000
        let a = try branch()
        try put(path(a) + "/from-a.txt", "a\n")
        _ = try fs.commit(a)
        let b = try branch()
        try put(path(b) + "/from-b.txt", "b\n")
        _ = try fs.commit(b)
        XCTAssertEqual(get(workspace + "/from-b.txt"), "b\n")
    }

    func testABranchWhoseCommitACrashInterruptedCommitsAfterTheRestartRemovedItsStaging() throws {
        // The removal moves the workspace root's ctime, the ancestor of every top-level path a
        // branch adds: BranchFS's own doing, not a change from outside.
        let a = try forkWriting("from-a.txt", "a\n")
        let b = try forkWriting("from-b.txt", "b\n")
        fs.close()
        fs = nil
        try FileManager.default.createDirectory(atPath: workspace + "/.sbx-staging-cdeadbeef0009", withIntermediateDirectories: true)
        try put(workspace + "/.sbx-staging-cdeadbeef0009/0", "staged before the crash\n")
        fs = try BranchFS(workspace: workspace, stateDirectory: state)
        XCTAssertFalse(exists(workspace + "/.sbx-staging-cdeadbeef0009"))
        XCTAssertEqual(try fs.externalChanges(a), [])
        _ = try fs.commit(a)
        XCTAssertEqual(get(workspace + "/from-a.txt"), "a\n")
        // A change from outside after that still counts (b lost to a anyway: only the check is
        // looked at here).
        _ = b
        let c = try forkWriting("from-c.txt", "c\n")
        fs.close()
        fs = nil
        try FileManager.default.createDirectory(atPath: workspace + "/.sbx-staging-cdeadbeef000a", withIntermediateDirectories: true)
        fs = try BranchFS(workspace: workspace, stateDirectory: state)
        leaveTheForkTick()
        try put(workspace + "/from-the-host.txt", "host\n")
        XCTAssertEqual(try fs.externalChanges(c), ["from-c.txt"])
        assertCommitRefused(c, for: ["from-c.txt"])
    }

    func testARefusedCommitLeavesNoStagingInTheWorkspace() throws {
        let a = try forkWriting("README", "from a\n")
        try put(workspace + "/README", "from the host\n")
        assertCommitRefused(a, for: ["README"])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: workspace).sorted(), ["README", "docs", "src"])
    }
}

extension BranchFSTestCase {
    /// Lets the kernel's coarse clock pass the fork time. A file whose ctime nobody read since
    /// its last change is stamped from that clock, which moves once a tick (at most 4 ms): a
    /// change in the fork's own tick may carry a stamp no later than the fork, which no ctime
    /// check can tell from one before it.
    func leaveTheForkTick() { usleep(20_000) }

    /// Forks a branch of main, writes `text` to `rel` in it, and leaves the fork's tick.
    func forkWriting(_ rel: String, _ text: String) throws -> String {
        let id = try branch()
        try put(path(id) + "/" + rel, text)
        leaveTheForkTick()
        return id
    }

    /// Asserts that committing `id` is refused as a conflict naming exactly `paths`.
    func assertCommitRefused(_ id: String, for paths: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try fs.commit(id), file: file, line: line) { e in
            XCTAssertEqual(e as? BranchError, .externalChange(id, paths: paths), file: file, line: line)
            XCTAssertEqual((e as? BranchError)?.kind, "conflict", file: file, line: line)
        }
    }

    /// Asserts the text of each file of the workspace named in `files`.
    func assertWorkspace(_ files: KeyValuePairs<String, String>, file: StaticString = #filePath, line: UInt = #line) {
        for (rel, text) in files { XCTAssertEqual(get(workspace + "/" + rel), text, rel, file: file, line: line) }
    }
}
