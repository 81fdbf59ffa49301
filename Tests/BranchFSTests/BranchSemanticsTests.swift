import CBranchFS
import XCTest
@testable import BranchFS

/// DESIGN §5, one promise per test, through the real FUSE mount.
final class BranchSemanticsTests: BranchFSTestCase {
    func testABranchShowsTheWorkspaceAndKeepsItsWritesToItself() throws {
        let a = try branch(), b = try branch()
        XCTAssertEqual(get(path(a) + "/README"), "hello\n")
        try put(path(a) + "/README", "from a\n")
        try put(path(a) + "/new.txt", "new\n")
        XCTAssertEqual(get(path(a) + "/README"), "from a\n")
        XCTAssertEqual(get(path(b) + "/README"), "hello\n", "a sibling does not see a's writes")
        XCTAssertFalse(exists(path(b) + "/new.txt"))
        XCTAssertEqual(get(workspace + "/README"), "hello\n", "the workspace is untouched until commit")
    }

    func testOpeningWithOTruncEmptiesTheFileBeforeTheWrite() throws {
        let a = try branch()
        try put(path(a) + "/README", "a much longer line than before\n")
        try put(path(a) + "/README", "short\n")
        XCTAssertEqual(get(path(a) + "/README"), "short\n")
        try put(path(a) + "/src/main.c", "x\n") // a file still in the lower layer
        XCTAssertEqual(get(path(a) + "/src/main.c"), "x\n")
    }

    func testAParentWithLiveChildrenIsFrozen() throws {
        _ = try branch()
        XCTAssertEqual(writeErrno(path("main") + "/README"), EROFS)
        XCTAssertEqual(get(workspace + "/README"), "hello\n")
    }

    func testFirstCommitWinsAndTheSiblingIsStaleAndRefused() throws {
        let a = try branch(), b = try branch()
        try put(path(a) + "/README", "a wins\n")
        try put(path(b) + "/README", "b loses\n")
        let r = try fs.commit(a)
        XCTAssertEqual(r.into, "main")
        XCTAssertEqual(r.epoch, 1)
        XCTAssertEqual(r.invalidated, [b])
        XCTAssertEqual(get(workspace + "/README"), "a wins\n")
        XCTAssertThrowsError(try fs.commit(b)) { e in
            XCTAssertEqual(e as? BranchError, .conflict(b, winner: a))
        }
        XCTAssertEqual(writeErrno(path(b) + "/README"), ENOENT, "a dead branch's path is gone")
        XCTAssertEqual(get(workspace + "/README"), "a wins\n")
    }

    func testACommitReturnsOnceJournaledAndTheParentWaitsForItsJournalToGo() throws {
        fs.settleDelayForTesting = 100_000
        for round in 0..<3 {
            let a = try branch()
            try put(path(a) + "/README", "round \(round)\n")
            _ = try fs.commit(a)
            // No sleep: the write waits for the commit's last fsyncs instead of failing, and
            // by the time it lands no journal is left to replay over it.
            try put(path("main") + "/main.txt", "after \(round)\n")
            XCTAssertNil(fs.journal.read(), "no journal is left to replay")
            XCTAssertEqual(get(workspace + "/README"), "round \(round)\n")
            XCTAssertEqual(get(workspace + "/main.txt"), "after \(round)\n")
        }
    }

    func testAHostEditOfTheWorkspaceShowsThroughMainOnceItsAttributesExpire() throws {
        XCTAssertEqual(get(path("main") + "/README"), "hello\n") // now in the kernel's page cache
        // Same size, so only the mtime tells the kernel's cached pages are stale.
        try put(workspace + "/README", "HELLO\n")
        var later = [timespec(tv_sec: 2_000_000_000, tv_nsec: 0), timespec(tv_sec: 2_000_000_000, tv_nsec: 0)]
        XCTAssertEqual(utimensat(AT_FDCWD, workspace + "/README", &later, 0), 0)
        usleep(UInt32(FuseServer.mainTimeout * 1_000_000) + 200_000) // main's attributes expire
        XCTAssertEqual(get(path("main") + "/README"), "HELLO\n")
    }

    func testAnOpenFileOfAnInvalidatedBranchFailsWithESTALE() throws {
        let a = try branch(), b = try branch()
        let fd = open(path(b) + "/README", O_RDWR)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd) }
        _ = try fs.commit(a)
        XCTAssertEqual(write(fd, "late", 4), -1)
        XCTAssertEqual(errno, ESTALE)
    }

    func testCommitCarriesDeletionsRenamesModesAndSymlinks() throws {
        let a = try branch()
        let p = path(a)
        XCTAssertEqual(unlink(p + "/src/util.c"), 0)
        XCTAssertEqual(rename(p + "/docs", p + "/manual"), 0)
        XCTAssertEqual(chmod(p + "/README", 0o600), 0)
        XCTAssertEqual(symlink("README", p + "/LINK"), 0)
        XCTAssertEqual(symlink("/etc/passwd", p + "/abs"), 0)
        XCTAssertEqual(mkfifo(p + "/fifo", 0o644), 0)
        _ = try fs.commit(a)
        XCTAssertFalse(exists(workspace + "/src/util.c"))
        XCTAssertFalse(exists(workspace + "/docs"))
        XCTAssertEqual(get(workspace + "/manual/a/b/deep.txt"), "deep\n")
        var st = stat()
        XCTAssertEqual(stat(workspace + "/README", &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600)
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: workspace + "/LINK"), "README")
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: workspace + "/abs"), "/etc/passwd")
        XCTAssertEqual(lstat(workspace + "/fifo", &st), 0)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFIFO)
        XCTAssertEqual(get(workspace + "/src/main.c"), "int main(void) { return 0; }\n")
    }

    func testANestedBranchCommitsIntoItsParentThenTheParentIntoMain() throws {
        let parent = try branch()
        try put(path(parent) + "/p.txt", "parent\n")
        let child = try branch(from: parent)
        XCTAssertEqual(get(path(child) + "/p.txt"), "parent\n")
        XCTAssertEqual(writeErrno(path(parent) + "/p.txt"), EROFS, "the parent is frozen while the child lives")
        try put(path(child) + "/c.txt", "child\n")
        XCTAssertEqual(unlink(path(child) + "/README"), 0)
        XCTAssertThrowsError(try fs.commit(parent)) { e in XCTAssertEqual((e as? BranchError)?.kind, "frozen") }
        let r = try fs.commit(child)
        XCTAssertEqual(r.into, parent)
        XCTAssertEqual(get(path(parent) + "/c.txt"), "child\n")
        XCTAssertFalse(exists(path(parent) + "/README"))
        XCTAssertTrue(exists(workspace + "/README"), "main is untouched by a commit into a branch")
        _ = try fs.commit(parent)
        XCTAssertEqual(get(workspace + "/c.txt"), "child\n")
        XCTAssertEqual(get(workspace + "/p.txt"), "parent\n")
        XCTAssertFalse(exists(workspace + "/README"))
    }

    func testADirectoryRenamedOntoADeletedNameReplacesIt() throws {
        let a = try branch()
        let p = path(a)
        XCTAssertEqual(unlink(p + "/docs/a/b/deep.txt"), 0)
        XCTAssertEqual(rmdir(p + "/docs/a/b"), 0)
        XCTAssertEqual(rmdir(p + "/docs/a"), 0)
        XCTAssertEqual(rmdir(p + "/docs"), 0)
        XCTAssertEqual(mkdir(p + "/fresh", 0o755), 0)
        try put(p + "/fresh/new.txt", "new\n")
        XCTAssertEqual(rename(p + "/fresh", p + "/docs"), 0, String(cString: strerror(errno)))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: p + "/docs"), ["new.txt"])
        _ = try fs.commit(a)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: workspace + "/docs"), ["new.txt"])
    }

    func testAbortThrowsTheDeltaAwayAndUnfreezesTheParent() throws {
        let a = try branch()
        try put(path(a) + "/junk", "junk\n")
        try fs.abort(a)
        XCTAssertFalse(exists(path(a)))
        XCTAssertFalse(exists(state + "/layers/" + a))
        XCTAssertEqual(writeErrno(path("main") + "/fresh"), 0, "main is writable again")
        XCTAssertEqual(get(workspace + "/fresh"), "x")
    }

    func testDiffListsAddedModifiedAndDeletedPaths() throws {
        let a = try branch()
        let p = path(a)
        try put(p + "/README", "changed\n")
        try put(p + "/added.txt", "new\n")
        XCTAssertEqual(unlink(p + "/src/util.c"), 0)
        let fd = open(p + "/src/main.c", O_RDWR) // opened for writing, left identical
        close(fd)
        let d = try fs.diff(a)
        XCTAssertEqual(d, [
            BranchChange(path: "README", kind: .modified),
            BranchChange(path: "added.txt", kind: .added),
            BranchChange(path: "src/util.c", kind: .deleted),
        ])
    }

    func testBranchesAndTheirDeltasSurviveAReopen() throws {
        let a = try branch()
        try put(path(a) + "/kept.txt", "kept\n")
        fs.close()
        fs = try BranchFS(workspace: workspace, stateDirectory: state)
        XCTAssertEqual(try fs.info(a).state, .active)
        XCTAssertEqual(get(path(a) + "/kept.txt"), "kept\n")
    }

    func testAForkCopiesNothing() throws {
        // Its cost cannot grow with the tree: a fork's delta starts empty (timings are in bench/).
        let a = try branch()
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: state + "/layers/" + a), [])
    }

    func testAForkTakesItsDirectoriesFromAStockMadeAheadInBlockGroupsOfTheirOwn() throws {
        // Spread, a new delta does not allocate among the inodes a retired one just freed; made
        // ahead, the fork does not pay for ext4's search of every block group
        // (SpareDirectories).
        let ready = state + "/spares/ready"
        let stocked = try waitForStock(ready)
        let inodes = Set(try stocked.filter { $0.hasSuffix(".l") }.map { try inode(ready + "/" + $0) })
        let a = try branch()
        XCTAssertTrue(inodes.contains(try inode(state + "/layers/" + a)), "the delta is a spare made before the fork")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: state + "/layers/" + a), [])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: state + "/work/" + a), [])
        _ = try waitForStock(ready) // refilled
        let fd = open(state + "/spares/made", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd) }
        let marked = cbfs_is_topdir(fd)
        if marked < 0 {
            throw XCTSkip("the state directory's filesystem has no inode flags (\(String(cString: strerror(-marked)))): the stock is checked, its spreading cannot be")
        }
        XCTAssertEqual(marked, 1, "spares are made under FS_TOPDIR_FL (chattr +T), which spreads them")
    }

    /// Polls until `ready` holds a full stock of pairs and returns its names.
    private func waitForStock(_ ready: String) throws -> [String] {
        for _ in 0..<1000 {
            let names = try FileManager.default.contentsOfDirectory(atPath: ready)
            if names.count == 2 * SpareDirectories.stock { return names }
            usleep(10_000)
        }
        XCTFail("the stock of spare directories was not refilled within 10 s")
        return []
    }

    private func inode(_ path: String) throws -> ino_t {
        var st = stat()
        guard lstat(path, &st) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        return st.st_ino
    }

    func testHardLinksShareDataInTheBranchAndStayLinkedAfterCommit() throws {
        let a = try branch()
        let p = path(a)
        try put(p + "/one", "first\n")
        XCTAssertEqual(link(p + "/one", p + "/two"), 0)
        try put(p + "/two", "through two\n")
        XCTAssertEqual(get(p + "/one"), "through two\n", "one inode, one page cache")
        var st = stat()
        XCTAssertEqual(stat(p + "/one", &st), 0)
        XCTAssertEqual(st.st_nlink, 2)
        XCTAssertEqual(unlink(p + "/one"), 0)
        XCTAssertEqual(get(p + "/two"), "through two\n")
        XCTAssertEqual(link(p + "/two", p + "/three"), 0)
        _ = try fs.commit(a)
        var s2 = stat(), s3 = stat()
        XCTAssertEqual(stat(workspace + "/two", &s2), 0)
        XCTAssertEqual(stat(workspace + "/three", &s3), 0)
        XCTAssertEqual(s2.st_ino, s3.st_ino, "the commit keeps the names linked")
        XCTAssertFalse(exists(workspace + "/one"))
    }

    func testAnUnlinkedOpenFileStaysReadableAndWritable() throws {
        let a = try branch()
        let p = path(a) + "/tmpfile"
        let fd = open(p, O_RDWR | O_CREAT, 0o600)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd) }
        XCTAssertEqual(unlink(p), 0)
        XCTAssertEqual(pwrite(fd, "abc", 3, 0), 3)
        var buf = [UInt8](repeating: 0, count: 3)
        XCTAssertEqual(pread(fd, &buf, 3, 0), 3)
        XCTAssertEqual(String(decoding: buf, as: UTF8.self), "abc")
        var st = stat()
        XCTAssertEqual(fstat(fd, &st), 0)
        XCTAssertEqual(st.st_nlink, 0)
        XCTAssertFalse(exists(p))
    }

    func testDeadBranchesGiveBackTheirFileDescriptors() throws {
        /// fds of this process (which hosts the FUSE server) open on the deltas of `ids`.
        func fds(on ids: [String]) throws -> [String] {
            try FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").compactMap { fd in
                try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/" + fd)
            }.filter { target in target.contains("/trash/") || ids.contains { target.contains("/layers/" + $0) || target.contains("/work/" + $0) } }
        }
        var dead: [String] = []
        for _ in 0..<40 {
            let a = try branch()
            try put(path(a) + "/x", "x")
            XCTAssertEqual(get(path(a) + "/README"), "hello\n")
            try fs.abort(a)
            dead.append(a)
        }
        let winner = try branch(), loser = try branch()
        try put(path(winner) + "/y", "y")
        try put(path(loser) + "/z", "z")
        _ = try fs.commit(winner)
        dead += [winner, loser]
        fs.quiesce() // the commit's last fsyncs and the deletions run in the background
        XCTAssertEqual(try fds(on: dead), [], "each dead view closes its layer directories and files")
    }
}
