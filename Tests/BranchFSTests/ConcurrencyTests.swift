import Foundation
import XCTest
@testable import BranchFS

#if canImport(Glibc)
import Glibc
#endif

/// DESIGN §5 under load: branches written at once stay isolated, a commit racing writers is one
/// consistent cut (every write that returned is in it, every later write fails), first commit
/// wins when two race, and a frozen parent reads the same while it is being forked.
final class ConcurrencyTests: BranchFSTestCase {
    func testEightBranchesWrittenAtOnceEachHoldExactlyTheirOwnFiles() throws {
        let ids = try fs.create(from: "main", count: 8).map(\.id)
        let paths = ids.map { fs.path(of: $0) }
        let errors = LockedList<String>()
        DispatchQueue.concurrentPerform(iterations: paths.count) { k in
            let p = paths[k]
            if mkdir(p + "/out", 0o755) != 0 { errors.append("branch \(k): mkdir out: errno \(errno)") }
            for i in 0..<200 {
                let e = writeWhole(p + "/out/b\(k)-\(i)", Self.content(branch: k, file: i), flags: O_CREAT | O_EXCL)
                if e != 0 { errors.append("branch \(k) file \(i): errno \(e)") }
            }
            let e = writeWhole(p + "/README", "README of \(k)\n", flags: O_TRUNC)
            if e != 0 { errors.append("branch \(k) README: errno \(e)") }
        }
        XCTAssertEqual(errors.items, [])
        for (k, p) in paths.enumerated() {
            let expected = (0..<200).map { "b\(k)-\($0)" }.sorted()
            XCTAssertEqual(listing(p + "/out").filter { $0 != "." && $0 != ".." }, expected, "branch \(k) lists exactly its own files")
            var wrong = 0
            for i in 0..<200 where get(p + "/out/b\(k)-\(i)") != Self.content(branch: k, file: i) { wrong += 1 }
            XCTAssertEqual(wrong, 0, "branch \(k): files with other content than written")
            XCTAssertEqual(get(p + "/README"), "README of \(k)\n")
        }
        XCTAssertFalse(exists(workspace + "/out"), "nothing reached the workspace")
        XCTAssertEqual(get(workspace + "/README"), "hello\n")
    }

    static func content(branch k: Int, file i: Int) -> String {
        String(repeating: "branch \(k) file \(i)\n", count: 1 + i % 50)
    }

    /// Writers keep rewriting 64 KiB files (one pwrite each, so one FUSE write) and creating new
    /// ones while the branch commits. The workspace then holds, for every file, exactly the last
    /// version whose write returned success, never a mix of two versions; every write after the
    /// commit fails with ESTALE or ENOENT; and nothing reaches the workspace afterwards.
    func testACommitRacingWritersIsOneCutAndLaterWritesFailStale() throws {
        let threads = 4, perThread = 4, size = 65536
        for t in 0..<threads { for j in 0..<perThread { try put(workspace + "/race/s\(t)-\(j)", RaceFile.text(t, j, 0, size)) } }
        let a = try branch()
        let p = path(a)
        let race = RaceState(threads: threads, perThread: perThread)
        let group = DispatchGroup()
        for t in 0..<threads {
            DispatchQueue.global().async(group: group) { RaceFile.writer(t, p, size, race) }
        }
        // Let every writer get going, then commit in the middle of their work.
        let deadline = Date().addingTimeInterval(60)
        while race.minIterations() < 10 && Date() < deadline { usleep(1_000) }
        race.setCommitting()
        let result = try fs.commit(a)
        race.setCommitted()
        guard group.wait(timeout: .now() + 120) == .success else {
            XCTFail("writers still running 120 s after the commit: writes after it neither fail nor finish")
            return
        }
        XCTAssertEqual(result.into, "main")
        let snapshot = RaceState.Snapshot(race)
        XCTAssertEqual(snapshot.failuresBeforeCommit, [], "no write fails before the commit starts")
        XCTAssertEqual(snapshot.badErrnos, [], "writes after the commit fail with ESTALE or ENOENT only")
        XCTAssertTrue(snapshot.sawFailureAfterCommit.allSatisfy { $0 }, "every writer saw its writes refused after the commit")
        for t in 0..<threads {
            for j in 0..<perThread {
                let data = bytes(workspace + "/race/s\(t)-\(j)") ?? []
                let versions = RaceFile.versions(data)
                XCTAssertEqual(data.count, size, "s\(t)-\(j) keeps its size")
                XCTAssertEqual(versions.count, 1, "s\(t)-\(j) is torn: holds versions \(versions.sorted())")
                XCTAssertEqual(versions.first, snapshot.lastWritten[t][j],
                               "s\(t)-\(j): the workspace holds the last version whose write returned")
            }
            for (i, outcome) in snapshot.created[t].enumerated() {
                let file = workspace + "/race/n\(t)-\(i)"
                switch outcome {
                case .written:
                    XCTAssertEqual(bytes(file).map { Array($0) }, Array(RaceFile.text(t, 999, i, size).utf8), "n\(t)-\(i) was written before the commit")
                case .createdOnly:
                    XCTAssertTrue(!exists(file) || sizeOf(file) == 0, "n\(t)-\(i): only its creation preceded the commit")
                case .refused:
                    XCTAssertFalse(exists(file), "n\(t)-\(i) was refused but is in the workspace")
                }
            }
        }
        let names = Set(listing(workspace + "/race")).subtracting([".", ".."])
        let allowed = Set((0..<threads).flatMap { t in (0..<perThread).map { "s\(t)-\($0)" } + snapshot.created[t].indices.map { "n\(t)-\($0)" } })
        XCTAssertEqual(names.subtracting(allowed), [], "files nobody wrote")
        // Nothing may trickle into the workspace later, not even across a reopen.
        let before = treeDigest(workspace)
        fs.close()
        fs = try BranchFS(workspace: workspace, stateDirectory: state)
        XCTAssertEqual(treeDigest(workspace), before, "the workspace changed after the commit returned")
        XCTAssertFalse(exists(path(a)), "the committed branch's path is gone")
    }

    func testTwoSiblingCommitsStartedTogetherExactlyOneWinsAndTheOtherNamesTheWinner() throws {
        for round in 0..<10 {
            let ids = try fs.create(from: "main", count: 2).map(\.id)
            for id in ids { try put(path(id) + "/README", "written by \(id)\n") }
            let outcomes = LockedList<(String, Result<CommitResult, BranchError>)>()
            let start = DispatchSemaphore(value: 0)
            let group = DispatchGroup()
            let fs = self.fs!
            for id in ids {
                DispatchQueue.global().async(group: group) {
                    start.wait()
                    do throws(BranchError) { outcomes.append((id, .success(try fs.commit(id)))) } catch { outcomes.append((id, .failure(error))) }
                }
            }
            start.signal(); start.signal()
            guard group.wait(timeout: .now() + 60) == .success else { return XCTFail("round \(round): commits did not return") }
            let wins = outcomes.items.filter { if case .success = $0.1 { return true } else { return false } }
            XCTAssertEqual(wins.count, 1, "round \(round): exactly one commit wins: \(outcomes.items)")
            guard let winner = wins.first?.0, let loser = ids.first(where: { $0 != winner }) else { continue }
            let lost = outcomes.items.first { $0.0 == loser }?.1
            if case let .failure(e) = lost {
                XCTAssertEqual(e, .conflict(loser, winner: winner), "round \(round): the loser is told who won")
            } else {
                XCTFail("round \(round): the loser's commit did not fail: \(String(describing: lost))")
            }
            XCTAssertEqual(get(workspace + "/README"), "written by \(winner)\n", "round \(round)")
            XCTAssertEqual(try fs.info(loser).state, .invalidated)
        }
    }

    func testReadersOfAFrozenParentSeeItUnchangedWhileChildrenAreForked() throws {
        let parent = try branch()
        let pp = path(parent)
        for i in 0..<50 { try put(pp + "/f\(i)", "parent file \(i)\n") }
        _ = try branch(from: parent) // frozen from here on
        let stop = Flag()
        let problems = LockedList<String>()
        let reads = Counter()
        let group = DispatchGroup()
        for r in 0..<4 {
            DispatchQueue.global().async(group: group) {
                while !stop.isSet {
                    for i in 0..<50 {
                        let fd = open(pp + "/f\(i)", O_RDONLY)
                        if fd < 0 { problems.append("reader \(r): open f\(i): errno \(errno)"); continue }
                        var buf = [UInt8](repeating: 0, count: 256)
                        let n = read(fd, &buf, buf.count)
                        close(fd)
                        let text = n >= 0 ? String(decoding: buf.prefix(n), as: UTF8.self) : "<errno \(errno)>"
                        if text != "parent file \(i)\n" { problems.append("reader \(r): f\(i) read \(text.debugDescription)") }
                    }
                    let count = (try? FileManager.default.contentsOfDirectory(atPath: pp).count) ?? -1
                    if count != 53 { problems.append("reader \(r): parent lists \(count) entries, not 53 (50 files, README, src, docs)") }
                    reads.increment()
                }
            }
        }
        var children: [String] = []
        for _ in 0..<20 {
            let c = try branch(from: parent)
            children.append(c)
            XCTAssertEqual(get(path(c) + "/f7"), "parent file 7\n")
        }
        while reads.value < 20 { usleep(1_000) }
        stop.set()
        XCTAssertEqual(group.wait(timeout: .now() + 60), .success, "readers did not stop")
        XCTAssertEqual(problems.items.prefix(10).map { $0 }, [])
        XCTAssertEqual(writeErrno(pp + "/f1"), EROFS, "the parent stays frozen")
        XCTAssertEqual(fs.liveChildren(of: parent).count, 21)
    }

    func testConcurrentExclusiveCreatesOfOneNameInABranchHaveExactlyOneWinner() throws {
        let p = path(try branch())
        for round in 0..<20 {
            let winners = Counter()
            let others = LockedList<Int32>()
            DispatchQueue.concurrentPerform(iterations: 4) { k in
                let fd = open(p + "/excl-\(round)", O_CREAT | O_EXCL | O_WRONLY, 0o644)
                if fd >= 0 { winners.increment(); _ = write(fd, "\(k)", 1); close(fd) } else { others.append(errno) }
            }
            XCTAssertEqual(winners.value, 1, "round \(round)")
            XCTAssertEqual(others.items, [EEXIST, EEXIST, EEXIST], "round \(round)")
        }
    }
}

// MARK: - helpers

/// Writes `text` with one open, one write and one close; the errno of the first failure or 0.
func writeWhole(_ path: String, _ text: String, flags: Int32) -> Int32 {
    let fd = open(path, O_WRONLY | flags, 0o644)
    if fd < 0 { return errno }
    let n = write(fd, text, text.utf8.count)
    let e = errno
    if close(fd) != 0 { return errno }
    return n == text.utf8.count ? 0 : (n < 0 ? e : EIO)
}

/// A digest of a tree for "did anything change": relative path, type, mode, size, content.
func treeDigest(_ root: String) -> [String: String] {
    var out: [String: String] = [:]
    func walk(_ rel: String) {
        let full = rel.isEmpty ? root : root + "/" + rel
        var st = stat()
        guard lstat(full, &st) == 0 else { return }
        let kind = st.st_mode & S_IFMT
        var entry = "\(kind) \(String(st.st_mode & 0o7777, radix: 8)) \(st.st_uid):\(st.st_gid)"
        if kind == S_IFREG {
            let data = FileManager.default.contents(atPath: full) ?? Data()
            entry += " \(data.count) \(fnv1a(data))"
        } else if kind == S_IFLNK {
            entry += " -> " + ((try? FileManager.default.destinationOfSymbolicLink(atPath: full)) ?? "?")
        }
        out[rel.isEmpty ? "." : rel] = entry
        if kind == S_IFDIR {
            for name in ((try? FileManager.default.contentsOfDirectory(atPath: full)) ?? []).sorted() {
                walk(rel.isEmpty ? name : rel + "/" + name)
            }
        }
    }
    walk("")
    return out
}

func fnv1a(_ data: Data) -> String {
    var h: UInt64 = 0xcbf29ce484222325
    for b in data { h = (h ^ UInt64(b)) &* 0x100000001b3 }
    return String(h, radix: 16)
}

final class LockedList<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var list: [T] = []
    func append(_ x: T) { lock.lock(); list.append(x); lock.unlock() }
    var items: [T] { lock.lock(); defer { lock.unlock() }; return list }
}

final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func increment() { lock.lock(); n += 1; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return n }
}

final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var on = false
    func set() { lock.lock(); on = true; lock.unlock() }
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return on }
}

/// What the racing writers did, shared between them and the test.
final class RaceState: @unchecked Sendable {
    enum Created: Equatable { case written, createdOnly, refused }
    private let lock = NSLock()
    private var committing = false
    private var committed = false
    private var iterations: [Int]
    private var lastWritten: [[Int]]
    private var created: [[Created]]
    private var failuresBeforeCommit: [String] = []
    private var badErrnos: [String] = []
    private var sawFailureAfterCommit: [Bool]

    init(threads: Int, perThread: Int) {
        iterations = Array(repeating: 0, count: threads)
        lastWritten = Array(repeating: Array(repeating: 0, count: perThread), count: threads)
        created = Array(repeating: [], count: threads)
        sawFailureAfterCommit = Array(repeating: false, count: threads)
    }

    private func locked<R>(_ body: () -> R) -> R { lock.lock(); defer { lock.unlock() }; return body() }
    func setCommitting() { locked { committing = true } }
    func setCommitted() { locked { committed = true } }
    var isCommitted: Bool { locked { committed } }
    func minIterations() -> Int { locked { iterations.min() ?? 0 } }
    func iterationDone(_ t: Int) { locked { iterations[t] += 1 } }
    func wrote(_ t: Int, _ j: Int, version: Int) { locked { lastWritten[t][j] = version } }
    func created(_ t: Int, _ outcome: Created) { locked { created[t].append(outcome) } }

    /// Records a failed syscall; returns how the writer should go on.
    func failed(_ t: Int, _ what: String, _ e: Int32) {
        locked {
            if !committing { failuresBeforeCommit.append("\(what): errno \(e)") }
            if e != ESTALE && e != ENOENT { badErrnos.append("\(what): errno \(e) \(String(cString: strerror(e)))") }
            if committed { sawFailureAfterCommit[t] = true }
        }
    }

    func needsMore(_ t: Int) -> Bool { locked { !(committed && sawFailureAfterCommit[t]) } }

    struct Snapshot {
        let lastWritten: [[Int]]
        let created: [[Created]]
        let failuresBeforeCommit: [String]
        let badErrnos: [String]
        let sawFailureAfterCommit: [Bool]
        init(_ s: RaceState) {
            (lastWritten, created, failuresBeforeCommit, badErrnos, sawFailureAfterCommit) =
                s.locked { (s.lastWritten, s.created, s.failuresBeforeCommit, s.badErrnos, s.sawFailureAfterCommit) }
        }
    }
}

enum RaceFile {
    /// `size` bytes of 16-byte records naming thread, file and version: a torn file holds two.
    static func text(_ t: Int, _ j: Int, _ v: Int, _ size: Int) -> String {
        let record = String(format: "t%02d j%03d v%05d\n", t, j, v)
        return String(repeating: record, count: size / record.utf8.count)
    }

    /// The versions a file's records name.
    static func versions(_ data: [UInt8]) -> Set<Int> {
        var out = Set<Int>()
        var i = 0
        while i + 16 <= data.count {
            let rec = String(decoding: data[i..<i + 16], as: UTF8.self)
            out.insert(Int(rec.dropFirst(10).prefix(5)) ?? -1)
            i += 16
        }
        return out
    }

    static func writer(_ t: Int, _ p: String, _ size: Int, _ state: RaceState) {
        var i = 0
        while state.needsMore(t) && i < 100_000 {
            i += 1
            let j = i % 4
            let pending = Array(text(t, j, i, size).utf8)
            let fd = open(p + "/race/s\(t)-\(j)", O_WRONLY)
            if fd < 0 { state.failed(t, "open s\(t)-\(j) v\(i)", errno) } else {
                let n = pwrite(fd, pending, pending.count, 0)
                if n == pending.count { state.wrote(t, j, version: i) } else { state.failed(t, "pwrite s\(t)-\(j) v\(i)", n < 0 ? errno : EIO) }
                close(fd)
            }
            let nfd = open(p + "/race/n\(t)-\(i - 1)", O_CREAT | O_EXCL | O_WRONLY, 0o644)
            if nfd < 0 { state.failed(t, "create n\(t)-\(i - 1)", errno); state.created(t, .refused) } else {
                let data = Array(text(t, 999, i - 1, size).utf8)
                let n = write(nfd, data, data.count)
                if n == data.count { state.created(t, .written) } else { state.failed(t, "write n\(t)-\(i - 1)", n < 0 ? errno : EIO); state.created(t, .createdOnly) }
                close(nfd)
            }
            state.iterationDone(t)
        }
    }
}
