import XCTest
@testable import BranchFS

final class BranchStoreTests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        dir = "/tmp/sbx-branchstore-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    func testForkingCountSiblingsRecordsTheParentsEpoch() throws {
        let store = try BranchStore(stateDirectory: nil)
        let kids = try store.create(count: 3)
        XCTAssertEqual(kids.count, 3)
        XCTAssertEqual(Set(kids.map(\.id)).count, 3)
        XCTAssertTrue(kids.allSatisfy { $0.parent == "main" && $0.forkEpoch == 0 && $0.state == .active })
        XCTAssertTrue(store.isFrozen("main"), "a parent with live children is frozen")
    }

    func testFirstCommitWinsAndSiblingsAreInvalidated() throws {
        let store = try BranchStore(stateDirectory: nil)
        let kids = try store.create(count: 3)
        let (epoch, invalidated) = try store.commit(kids[1].id)
        XCTAssertEqual(epoch, 1)
        XCTAssertEqual(Set(invalidated), [kids[0].id, kids[2].id])
        XCTAssertEqual(try store.info("main").epoch, 1)
        XCTAssertEqual(try store.info(kids[1].id).state, .committed)
        XCTAssertFalse(store.isFrozen("main"))
    }

    func testSiblingCommitAfterWinnerFailsWithConflictNamingTheWinner() throws {
        let store = try BranchStore(stateDirectory: nil)
        let kids = try store.create(count: 2)
        _ = try store.commit(kids[0].id)
        XCTAssertThrowsError(try store.commit(kids[1].id)) { error in
            XCTAssertEqual(error as? BranchError, .conflict(kids[1].id, winner: kids[0].id))
            XCTAssertEqual((error as? BranchError)?.kind, "conflict")
        }
    }

    func testBranchWithLiveChildrenCannotCommit() throws {
        let store = try BranchStore(stateDirectory: nil)
        let parent = try store.create()[0]
        let child = try store.create(from: parent.id)[0]
        XCTAssertThrowsError(try store.commit(parent.id)) { error in
            XCTAssertEqual(error as? BranchError, .frozen(parent.id, children: [child.id]))
        }
    }

    func testNestedBranchCommitsIntoItsImmediateParent() throws {
        let store = try BranchStore(stateDirectory: nil)
        let parent = try store.create()[0]
        let child = try store.create(from: parent.id)[0]
        _ = try store.commit(child.id)
        XCTAssertEqual(try store.info(parent.id).epoch, 1)
        XCTAssertEqual(try store.info("main").epoch, 0, "main is untouched until the parent commits")
        _ = try store.commit(parent.id)
        XCTAssertEqual(try store.info("main").epoch, 1)
    }

    func testInvalidationReachesDescendantsOfLosers() throws {
        let store = try BranchStore(stateDirectory: nil)
        let kids = try store.create(count: 2)
        let grandchild = try store.create(from: kids[1].id)[0]
        let (_, invalidated) = try store.commit(kids[0].id)
        XCTAssertEqual(Set(invalidated), [kids[1].id, grandchild.id])
        XCTAssertEqual(try store.info(grandchild.id).state, .invalidated)
        XCTAssertEqual(BranchError.notActive(grandchild.id, .invalidated).kind, "stale")
    }

    func testAbortCascadesAndUnfreezesTheParent() throws {
        let store = try BranchStore(stateDirectory: nil)
        let b = try store.create()[0]
        let c = try store.create(from: b.id)[0]
        try store.abort(b.id)
        XCTAssertEqual(try store.info(b.id).state, .aborted)
        XCTAssertEqual(try store.info(c.id).state, .aborted)
        XCTAssertFalse(store.isFrozen("main"))
        XCTAssertThrowsError(try store.commit(b.id))
    }

    func testBadRequestsAreRefusedPrecisely() throws {
        let store = try BranchStore(stateDirectory: nil)
        XCTAssertThrowsError(try store.commit("main")) { XCTAssertEqual(($0 as? BranchError)?.kind, "invalid_request") }
        XCTAssertThrowsError(try store.commit("nope")) { XCTAssertEqual($0 as? BranchError, .notFound("nope")) }
        XCTAssertThrowsError(try store.create(count: 0))
        XCTAssertThrowsError(try store.create(from: "nope"))
    }

    func testAForkRecordsTheTimeItWasMadeAt() throws {
        let store = try BranchStore(stateDirectory: nil)
        let before = ExternalChanges.now()
        let forkTime = try XCTUnwrap(try store.create()[0].forkTime)
        XCTAssertTrue((before...ExternalChanges.now()).contains(forkTime))
        XCTAssertNil(try store.info("main").forkTime, "main is not forked")
    }

    func testRegistrySurvivesARestart() throws {
        let store = try BranchStore(stateDirectory: dir)
        let kids = try store.create(count: 2)
        _ = try store.commit(kids[0].id)
        let reopened = try BranchStore(stateDirectory: dir)
        XCTAssertEqual(reopened.list(), store.list())
        XCTAssertThrowsError(try reopened.commit(kids[1].id)) { error in
            XCTAssertEqual(error as? BranchError, .conflict(kids[1].id, winner: kids[0].id))
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/branches.json.tmp"), "no temp file left behind")
    }

    func testForksAreAppendedAndATornLogTailLosesNothingBeforeIt() throws {
        let store = try BranchStore(stateDirectory: dir)
        let kept = try store.create(count: 3)
        _ = try store.commit(kept[0].id)
        // Power loss in the middle of the next append: half a line, then garbage.
        let log = dir + "/branches.log"
        let fd = open(log, O_WRONLY | O_APPEND)
        XCTAssertGreaterThanOrEqual(fd, 0)
        _ = write(fd, "{\"id\":\"bhalf", 13)
        close(fd)
        let reopened = try BranchStore(stateDirectory: dir)
        XCTAssertEqual(try reopened.info(kept[0].id).state, .committed)
        XCTAssertEqual(try reopened.info(kept[1].id).state, .invalidated)
        XCTAssertEqual(try reopened.info("main").epoch, 1)
        XCTAssertEqual(reopened.list().count, 4)
        XCTAssertEqual(try String(contentsOfFile: log, encoding: .utf8), "", "reopening folds the log into the snapshot")
    }

    func testTheLogIsFoldedIntoTheSnapshotPeriodically() throws {
        let store = try BranchStore(stateDirectory: dir)
        for _ in 0..<(BranchStore.compactEvery + 10) { _ = try store.create() }
        let lines = try String(contentsOfFile: dir + "/branches.log", encoding: .utf8).split(separator: "\n").count
        XCTAssertLessThan(lines, BranchStore.compactEvery)
        XCTAssertEqual(try BranchStore(stateDirectory: dir).list().count, BranchStore.compactEvery + 11)
    }
}
