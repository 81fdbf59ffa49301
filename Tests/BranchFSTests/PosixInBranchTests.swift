import CBranchFS
import TestSupport
import XCTest
@testable import BranchFS

#if canImport(Glibc)
import Glibc
#endif

/// DESIGN §5 "POSIX": every operation is done with real syscalls through a branch's path, checked
/// in the branch, then checked again in the workspace (the host directory) after the commit.
final class PosixInBranchTests: BranchFSTestCase {
    // MARK: - regular files

    func testCreateOverwriteAndAppendShowTheSameBytesInTheBranchAndAfterCommit() throws {
        let a = try branch(), p = path(a)
        try put(p + "/new.txt", "created\n")
        XCTAssertEqual(overwrite(p + "/README", "hi\n"), 0, "overwrite a lower file with shorter content")
        XCTAssertEqual(append(p + "/src/util.c", "int more;\n"), 0, "append to a lower file (copy-up keeps its data)")
        XCTAssertEqual(append(p + "/new.txt", "appended\n"), 0)
        let expected = ["new.txt": "created\nappended\n", "README": "hi\n", "src/util.c": "int util;\nint more;\n"]
        for (rel, text) in expected { XCTAssertEqual(get(p + "/" + rel), text, "branch: \(rel)") }
        XCTAssertEqual(get(workspace + "/README"), "hello\n", "the workspace is untouched before commit")
        _ = try fs.commit(a)
        for (rel, text) in expected { XCTAssertEqual(get(workspace + "/" + rel), text, "workspace: \(rel)") }
    }

    func testTruncateDownAndUpKeepsThePrefixAndFillsWithZeros() throws {
        let a = try branch(), p = path(a)
        XCTAssertEqual(truncate(p + "/README", 3), 0, "truncate down a lower file")
        XCTAssertEqual(get(p + "/README"), "hel")
        XCTAssertEqual(truncate(p + "/README", 8), 0, "truncate up")
        XCTAssertEqual(bytes(p + "/README"), Array("hel".utf8) + [0, 0, 0, 0, 0])
        let fd = open(p + "/src/main.c", O_RDWR)
        XCTAssertGreaterThanOrEqual(fd, 0)
        XCTAssertEqual(ftruncate(fd, 4), 0, "ftruncate through an open descriptor")
        close(fd)
        XCTAssertEqual(get(p + "/src/main.c"), "int ")
        XCTAssertEqual(truncate(p + "/src/util.c", 0), 0, "truncate to zero")
        XCTAssertEqual(sizeOf(p + "/src/util.c"), 0)
        _ = try fs.commit(a)
        XCTAssertEqual(bytes(workspace + "/README"), Array("hel".utf8) + [0, 0, 0, 0, 0])
        XCTAssertEqual(get(workspace + "/src/main.c"), "int ")
        XCTAssertEqual(sizeOf(workspace + "/src/util.c"), 0)
    }

    func testASparseWriteAtAnOffsetReadsBackZerosBeforeIt() throws {
        let a = try branch(), p = path(a)
        let offset: off_t = 3 << 20
        let fd = open(p + "/sparse", O_CREAT | O_WRONLY, 0o644)
        XCTAssertGreaterThanOrEqual(fd, 0)
        XCTAssertEqual(pwrite(fd, "tail", 4, offset), 4)
        close(fd)
        let check = { (file: String, `where`: String) in
            XCTAssertEqual(self.sizeOf(file), Int(offset) + 4, `where`)
            let data = self.bytes(file) ?? []
            XCTAssertEqual(data.count, Int(offset) + 4, `where`)
            XCTAssertTrue(data.prefix(Int(offset)).allSatisfy { $0 == 0 }, "\(`where`): the hole reads as zeros")
            XCTAssertEqual(Array(data.suffix(4)), Array("tail".utf8), `where`)
        }
        check(p + "/sparse", "branch")
        _ = try fs.commit(a)
        check(workspace + "/sparse", "workspace")
    }

    func testFsyncAndFdatasyncSucceedOnFilesAndDirectories() throws {
        let a = try branch(), p = path(a)
        let fd = open(p + "/synced", O_CREAT | O_WRONLY, 0o644)
        XCTAssertGreaterThanOrEqual(fd, 0)
        XCTAssertEqual(write(fd, "durable", 7), 7)
        XCTAssertEqual(fsync(fd), 0, "fsync: errno \(errno)")
        XCTAssertEqual(fdatasync(fd), 0, "fdatasync: errno \(errno)")
        close(fd)
        let lowerFD = open(p + "/README", O_RDONLY)
        XCTAssertEqual(fsync(lowerFD), 0, "fsync of a file opened read-only from the lower layer: errno \(errno)")
        close(lowerFD)
        let dfd = open(p + "/src", O_RDONLY | O_DIRECTORY)
        XCTAssertGreaterThanOrEqual(dfd, 0)
        XCTAssertEqual(fsync(dfd), 0, "fsync of a directory: errno \(errno)")
        close(dfd)
        _ = try fs.commit(a)
        XCTAssertEqual(get(workspace + "/synced"), "durable")
    }

    func testASharedMappingWrittenAndSyncedIsWhatReadReturns() throws {
        let a = try branch(), p = path(a)
        let len = 8192
        for (file, lower) in [(p + "/README", true), (p + "/mapped", false)] {
            let fd = open(file, O_RDWR | O_CREAT, 0o644)
            XCTAssertGreaterThanOrEqual(fd, 0, file)
            XCTAssertEqual(ftruncate(fd, off_t(len)), 0)
            let m = mmap(nil, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
            guard let m, m != UnsafeMutableRawPointer(bitPattern: -1) else {
                XCTFail("mmap MAP_SHARED of \(file) (lower: \(lower)): errno \(errno)")
                close(fd)
                continue
            }
            let text = Array("mapped \(lower)\n".utf8)
            m.copyMemory(from: text, byteCount: text.count)
            m.storeBytes(of: UInt8(ascii: "Z"), toByteOffset: len - 1, as: UInt8.self)
            XCTAssertEqual(msync(m, len, MS_SYNC), 0, "msync: errno \(errno)")
            munmap(m, len)
            close(fd)
            let back = bytes(file) ?? []
            XCTAssertEqual(back.count, len, file)
            XCTAssertEqual(Array(back.prefix(text.count)), text, "read() sees what the mapping wrote: \(file)")
            XCTAssertEqual(back.last, UInt8(ascii: "Z"), file)
        }
        _ = try fs.commit(a)
        XCTAssertEqual(bytes(workspace + "/README").map { Array($0.prefix(12)) }, Array("mapped true\n".utf8))
        XCTAssertEqual(bytes(workspace + "/mapped").map { Array($0.prefix(13)) }, Array("mapped false\n".utf8))
        XCTAssertEqual(bytes(workspace + "/mapped")?.last, UInt8(ascii: "Z"))
    }

    // MARK: - directories

    func testMkdirDeepAndRmdirOfNonEmptyAndOfLowerOnlyDirectories() throws {
        try FileManager.default.createDirectory(atPath: workspace + "/emptylower", withIntermediateDirectories: true)
        let a = try branch(), p = path(a)
        let deep = p + "/x/y/z/w/v/u"
        try FileManager.default.createDirectory(atPath: deep, withIntermediateDirectories: true)
        try put(deep + "/leaf", "leaf\n")
        XCTAssertEqual(get(deep + "/leaf"), "leaf\n")
        XCTAssertEqual(errnoOf(rmdir(p + "/src")), ENOTEMPTY, "a lower dir with files")
        XCTAssertEqual(errnoOf(rmdir(p + "/x/y")), ENOTEMPTY, "a branch-made dir with a subdir")
        XCTAssertEqual(errnoOf(rmdir(p + "/README")), ENOTDIR)
        XCTAssertEqual(rmdir(p + "/emptylower"), 0, "an empty dir only the lower layer holds: errno \(errno)")
        XCTAssertFalse(exists(p + "/emptylower"))
        XCTAssertEqual(unlink(p + "/docs/a/b/deep.txt"), 0)
        XCTAssertEqual(rmdir(p + "/docs/a/b"), 0, "a lower dir emptied in the branch: errno \(errno)")
        XCTAssertEqual(errnoOf(rmdir(p + "/docs")), ENOTEMPTY, "docs still holds a/")
        XCTAssertEqual(rmdir(p + "/docs/a"), 0)
        XCTAssertEqual(rmdir(p + "/docs"), 0)
        XCTAssertFalse(exists(p + "/docs"))
        XCTAssertTrue(exists(workspace + "/docs/a/b/deep.txt"), "the workspace is untouched before commit")
        _ = try fs.commit(a)
        XCTAssertEqual(get(workspace + "/x/y/z/w/v/u/leaf"), "leaf\n")
        XCTAssertFalse(exists(workspace + "/emptylower"))
        XCTAssertFalse(exists(workspace + "/docs"))
        XCTAssertTrue(exists(workspace + "/src/main.c"))
    }

    func testReaddirAfterMixedDeletesAndCreatesHasNoDuplicatesNoWhiteoutsAndDotEntries() throws {
        let a = try branch(), p = path(a)
        XCTAssertEqual(unlink(p + "/README"), 0)
        try put(p + "/README", "again\n") // deleted then recreated: one entry
        XCTAssertEqual(unlink(p + "/src/util.c"), 0)
        try put(p + "/src/new.c", "new\n")
        try put(p + "/src/main.c", "changed\n") // copied up: upper and lower both hold it
        XCTAssertEqual(unlink(p + "/docs/a/b/deep.txt"), 0)
        XCTAssertEqual(rmdir(p + "/docs/a/b"), 0)
        XCTAssertEqual(mkdir(p + "/docs/a/b", 0o755), 0, "a dir removed and made again")
        try put(p + "/added", "added\n")
        let expectRoot = [".", "..", "README", "added", "docs", "src"]
        let expectSrc = [".", "..", "main.c", "new.c"]
        XCTAssertEqual(listing(p), expectRoot)
        XCTAssertEqual(listing(p + "/src"), expectSrc)
        XCTAssertEqual(listing(p + "/docs/a/b"), [".", ".."], "the recreated dir hides the lower one (opaque)")
        XCTAssertEqual(get(p + "/README"), "again\n")
        for name in listing(p + "/src") where name != "." && name != ".." {
            var st = stat()
            XCTAssertEqual(lstat(p + "/src/" + name, &st), 0, name)
            XCTAssertEqual(st.st_mode & S_IFMT, S_IFREG, "\(name) is no whiteout")
        }
        _ = try fs.commit(a)
        XCTAssertEqual(listing(workspace), expectRoot)
        XCTAssertEqual(listing(workspace + "/src"), expectSrc)
        XCTAssertEqual(listing(workspace + "/docs/a/b"), [".", ".."])
        XCTAssertEqual(get(workspace + "/README"), "again\n")
    }

    // MARK: - symlinks

    func testSymlinksAreStoredAsWrittenAndNeverResolvedByTheServer() throws {
        let a = try branch(), p = path(a)
        XCTAssertEqual(symlink("/etc/passwd", p + "/abs"), 0)
        XCTAssertEqual(symlink("../../..", p + "/docs/a/up"), 0)
        XCTAssertEqual(symlink("src/main.c", p + "/rel"), 0)
        XCTAssertEqual(symlink("does/not/exist", p + "/dangling"), 0)
        let targets = ["abs": "/etc/passwd", "docs/a/up": "../../..", "rel": "src/main.c", "dangling": "does/not/exist"]
        for (rel, target) in targets {
            XCTAssertEqual(readLink(p + "/" + rel), target, "branch: \(rel)")
            XCTAssertEqual(lmode(p + "/" + rel), S_IFLNK, "branch: \(rel) is a symlink")
        }
        XCTAssertEqual(get(p + "/rel"), "int main(void) { return 0; }\n", "a relative link resolves within the branch")
        var st = stat()
        XCTAssertEqual(lstat(p + "/abs", &st), 0)
        XCTAssertEqual(Int(st.st_size), "/etc/passwd".utf8.count, "lstat reports the link, not its target")
        XCTAssertEqual(errnoOf(stat(p + "/dangling", &st)), ENOENT)
        _ = try fs.commit(a)
        for (rel, target) in targets {
            XCTAssertEqual(readLink(workspace + "/" + rel), target, "workspace: \(rel)")
        }
    }

    func testAFileCreatedThroughASymlinkedDirectoryLandsInsideTheBranch() throws {
        try FileManager.default.createSymbolicLink(atPath: workspace + "/lowerlink", withDestinationPath: "src")
        let a = try branch(), p = path(a)
        XCTAssertEqual(symlink("docs/a", p + "/branchlink"), 0)
        try put(p + "/branchlink/via-branch-link.txt", "one\n")
        try put(p + "/lowerlink/via-lower-link.c", "two\n")
        XCTAssertEqual(get(p + "/docs/a/via-branch-link.txt"), "one\n")
        XCTAssertEqual(get(p + "/src/via-lower-link.c"), "two\n")
        XCTAssertFalse(exists(workspace + "/docs/a/via-branch-link.txt"), "nothing reached the workspace before commit")
        XCTAssertFalse(exists(workspace + "/src/via-lower-link.c"))
        XCTAssertEqual(lmode(p + "/lowerlink"), S_IFLNK, "the lower symlink is still a symlink in the branch")
        _ = try fs.commit(a)
        XCTAssertEqual(get(workspace + "/docs/a/via-branch-link.txt"), "one\n")
        XCTAssertEqual(get(workspace + "/src/via-lower-link.c"), "two\n")
        XCTAssertEqual(readLink(workspace + "/branchlink"), "docs/a")
        XCTAssertEqual(readLink(workspace + "/lowerlink"), "src")
    }

    /// The commit writes the workspace by relative paths: if a directory the branch writes into
    /// was replaced by a symlink behind BranchFS's back, following it would write outside the
    /// workspace. The commit must refuse or stay inside; it must never write through the link.
    func testACommitNeverWritesThroughASymlinkPlantedInTheWorkspace() throws {
        let outside = root + "/outside"
        try FileManager.default.createDirectory(atPath: outside, withIntermediateDirectories: true)
        let a = try branch(), p = path(a)
        try put(p + "/src/planted.c", "branch data\n")
        try put(p + "/src/main.c", "changed\n")
        // Behind BranchFS's back: src becomes a symlink to a directory outside the workspace.
        XCTAssertEqual(rename(workspace + "/src", root + "/src-moved"), 0)
        XCTAssertEqual(symlink(outside, workspace + "/src"), 0)
        do { _ = try fs.commit(a) } catch { print("commit refused (acceptable): \(error)") }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: outside), [],
                       "the commit wrote through the planted symlink into \(outside)")
    }

    // MARK: - hard links

    func testHardLinksShareDataInTheBranchAndStayLinkedAfterCommit() throws {
        let a = try branch(), p = path(a)
        try put(p + "/orig", "v1\n")
        XCTAssertEqual(link(p + "/orig", p + "/twin"), 0, "link: errno \(errno)")
        XCTAssertEqual(link(p + "/README", p + "/src/readme-link"), 0, "link to a lower file: errno \(errno)")
        var s1 = stat(), s2 = stat()
        XCTAssertEqual(stat(p + "/orig", &s1), 0)
        XCTAssertEqual(stat(p + "/twin", &s2), 0)
        XCTAssertEqual(s1.st_nlink, 2)
        XCTAssertEqual(s2.st_nlink, 2)
        XCTAssertEqual(s1.st_ino, s2.st_ino, "two names of one file report one inode number")
        XCTAssertEqual(append(p + "/orig", "grown through orig\n"), 0)
        XCTAssertEqual(get(p + "/twin"), "v1\ngrown through orig\n", "a write through one name is read through the other")
        XCTAssertEqual(overwrite(p + "/twin", "v2\n"), 0)
        XCTAssertEqual(get(p + "/orig"), "v2\n")
        XCTAssertEqual(append(p + "/src/readme-link", "more\n"), 0)
        XCTAssertEqual(get(p + "/README"), "hello\nmore\n")
        XCTAssertEqual(unlink(p + "/orig"), 0)
        XCTAssertEqual(get(p + "/twin"), "v2\n", "unlinking one name keeps the other")
        XCTAssertEqual(stat(p + "/twin", &s2), 0)
        XCTAssertEqual(s2.st_nlink, 1)
        _ = try fs.commit(a)
        var w1 = stat(), w2 = stat()
        XCTAssertEqual(stat(workspace + "/README", &w1), 0)
        XCTAssertEqual(stat(workspace + "/src/readme-link", &w2), 0)
        XCTAssertEqual(w1.st_ino, w2.st_ino, "the commit keeps the two names linked")
        XCTAssertEqual(w1.st_nlink, 2)
        XCTAssertEqual(get(workspace + "/README"), "hello\nmore\n")
        XCTAssertEqual(get(workspace + "/twin"), "v2\n")
        XCTAssertFalse(exists(workspace + "/orig"))
    }

    func testLinkingADirectoryIsRefused() throws {
        let a = try branch(), p = path(a)
        XCTAssertEqual(errnoOf(link(p + "/src", p + "/src2")), EPERM)
        XCTAssertFalse(exists(p + "/src2"))
    }

    // MARK: - rename

    func testRenamingALowerDirectoryCarriesItsNestedContent() throws {
        let a = try branch(), p = path(a)
        try put(p + "/docs/a/new.txt", "added under docs\n") // merged: part upper, part lower
        XCTAssertEqual(rename(p + "/docs", p + "/manual"), 0, "errno \(errno)")
        XCTAssertFalse(exists(p + "/docs"))
        XCTAssertEqual(get(p + "/manual/a/b/deep.txt"), "deep\n")
        XCTAssertEqual(get(p + "/manual/a/new.txt"), "added under docs\n")
        XCTAssertEqual(listing(p + "/manual/a"), [".", "..", "b", "new.txt"])
        XCTAssertEqual(mkdir(p + "/docs", 0o755), 0, "the old name is free again")
        XCTAssertEqual(listing(p + "/docs"), [".", ".."], "and shows nothing of the lower docs")
        _ = try fs.commit(a)
        XCTAssertEqual(get(workspace + "/manual/a/b/deep.txt"), "deep\n")
        XCTAssertEqual(get(workspace + "/manual/a/new.txt"), "added under docs\n")
        XCTAssertEqual(listing(workspace + "/docs"), [".", ".."])
    }

    func testRenamingADirectoryOverAnEmptyDirectoryReplacesIt() throws {
        try FileManager.default.createDirectory(atPath: workspace + "/emptylower", withIntermediateDirectories: true)
        let a = try branch(), p = path(a)
        XCTAssertEqual(mkdir(p + "/emptyupper", 0o755), 0)
        XCTAssertEqual(rename(p + "/src", p + "/emptylower"), 0, "lower dir over lower empty dir: errno \(errno)")
        XCTAssertEqual(rename(p + "/docs", p + "/emptyupper"), 0, "lower dir over branch-made empty dir: errno \(errno)")
        XCTAssertEqual(errnoOf(rename(p + "/emptylower", p + "/emptyupper")), ENOTEMPTY, "over a non-empty dir")
        XCTAssertEqual(listing(p + "/emptylower"), [".", "..", "main.c", "util.c"])
        XCTAssertEqual(get(p + "/emptyupper/a/b/deep.txt"), "deep\n")
        XCTAssertFalse(exists(p + "/src"))
        XCTAssertFalse(exists(p + "/docs"))
        _ = try fs.commit(a)
        XCTAssertEqual(listing(workspace + "/emptylower"), [".", "..", "main.c", "util.c"])
        XCTAssertEqual(get(workspace + "/emptyupper/a/b/deep.txt"), "deep\n")
        XCTAssertFalse(exists(workspace + "/src"))
        XCTAssertFalse(exists(workspace + "/docs"))
    }

    func testRenamingAFileOverAnExistingFileReplacesItCopiedUpOrNot() throws {
        let a = try branch(), p = path(a)
        try put(p + "/README", "copied up first\n")
        XCTAssertEqual(rename(p + "/README", p + "/src/util.c"), 0, "a copied-up file over a lower file")
        XCTAssertEqual(rename(p + "/src/main.c", p + "/main-moved.c"), 0, "a lower file never copied up")
        try put(p + "/target", "old target\n")
        XCTAssertEqual(rename(p + "/docs/a/b/deep.txt", p + "/target"), 0, "a lower file over a branch-made file")
        let expected = ["src/util.c": "copied up first\n", "main-moved.c": "int main(void) { return 0; }\n", "target": "deep\n"]
        for (rel, text) in expected { XCTAssertEqual(get(p + "/" + rel), text, "branch: \(rel)") }
        for gone in ["README", "src/main.c", "docs/a/b/deep.txt"] { XCTAssertFalse(exists(p + "/" + gone), "branch: \(gone) is gone") }
        XCTAssertEqual(listing(p + "/src"), [".", "..", "util.c"])
        _ = try fs.commit(a)
        for (rel, text) in expected { XCTAssertEqual(get(workspace + "/" + rel), text, "workspace: \(rel)") }
        for gone in ["README", "src/main.c", "docs/a/b/deep.txt"] { XCTAssertFalse(exists(workspace + "/" + gone), "workspace: \(gone) is gone") }
    }

    func testRenameNoReplaceRefusesAnExistingTargetWithEEXIST() throws {
        let a = try branch(), p = path(a)
        XCTAssertEqual(errnoOf(cbfs_renameat2(AT_FDCWD, p + "/README", AT_FDCWD, p + "/src/main.c", CBFS_RENAME_NOREPLACE)), EEXIST)
        XCTAssertEqual(cbfs_renameat2(AT_FDCWD, p + "/README", AT_FDCWD, p + "/README2", CBFS_RENAME_NOREPLACE), 0, "errno \(errno)")
        XCTAssertEqual(get(p + "/src/main.c"), "int main(void) { return 0; }\n", "the refused target is intact")
        XCTAssertEqual(get(p + "/README2"), "hello\n")
        _ = try fs.commit(a)
        XCTAssertEqual(get(workspace + "/README2"), "hello\n")
        XCTAssertFalse(exists(workspace + "/README"))
        XCTAssertEqual(get(workspace + "/src/main.c"), "int main(void) { return 0; }\n")
    }

    func testRenamingADirectoryIntoItselfIsRefused() throws {
        let a = try branch(), p = path(a)
        XCTAssertEqual(errnoOf(rename(p + "/docs", p + "/docs/a/b/inside")), EINVAL)
        XCTAssertEqual(get(p + "/docs/a/b/deep.txt"), "deep\n")
    }

    // MARK: - metadata

    func testChmodChownAndUtimensSurviveTheCommit() throws {
        let a = try branch(), p = path(a)
        let mtime = timespec(tv_sec: 1_000_000_000, tv_nsec: 123_456_789)
        let atime = timespec(tv_sec: 900_000_000, tv_nsec: 0)
        XCTAssertEqual(chmod(p + "/README", 0o640), 0)
        XCTAssertEqual(chown(p + "/src/util.c", 1234, 5678), 0, "errno \(errno)")
        var times = [atime, mtime]
        XCTAssertEqual(utimensat(AT_FDCWD, p + "/src/main.c", &times, 0), 0, "errno \(errno)")
        XCTAssertEqual(chmod(p + "/docs", 0o711), 0)
        XCTAssertEqual(utimensat(AT_FDCWD, p + "/docs/a", &times, 0), 0, "utimens on a lower dir: errno \(errno)")
        XCTAssertEqual(symlink("README", p + "/ln"), 0)
        XCTAssertEqual(utimensat(AT_FDCWD, p + "/ln", &times, AT_SYMLINK_NOFOLLOW), 0, "utimens on a symlink itself: errno \(errno)")
        let check = { (base: String, w: String) in
            var st = stat()
            XCTAssertEqual(stat(base + "/README", &st), 0)
            XCTAssertEqual(st.st_mode & 0o7777, 0o640, "\(w): README mode")
            XCTAssertEqual(stat(base + "/src/util.c", &st), 0)
            XCTAssertEqual(st.st_uid, 1234, "\(w): util.c uid")
            XCTAssertEqual(st.st_gid, 5678, "\(w): util.c gid")
            XCTAssertEqual(stat(base + "/src/main.c", &st), 0)
            XCTAssertEqual(st.st_mtim.tv_sec, mtime.tv_sec, "\(w): main.c mtime")
            XCTAssertEqual(st.st_mtim.tv_nsec, mtime.tv_nsec, "\(w): main.c mtime ns")
            XCTAssertEqual(st.st_atim.tv_sec, atime.tv_sec, "\(w): main.c atime")
            XCTAssertEqual(stat(base + "/docs", &st), 0)
            XCTAssertEqual(st.st_mode & 0o7777, 0o711, "\(w): docs mode")
            XCTAssertEqual(stat(base + "/docs/a", &st), 0)
            XCTAssertEqual(st.st_mtim.tv_sec, mtime.tv_sec, "\(w): docs/a mtime")
            XCTAssertEqual(lstat(base + "/ln", &st), 0)
            XCTAssertEqual(st.st_mtim.tv_sec, mtime.tv_sec, "\(w): symlink mtime")
        }
        check(p, "branch")
        _ = try fs.commit(a)
        check(workspace, "workspace")
    }

    // MARK: - xattrs

    func testUserXattrsCanBeSetListedReadAndRemoved() throws {
        let a = try branch(), p = path(a)
        XCTAssertEqual(setxattr(p + "/README", "user.color", "blue", 4, 0), 0, "setxattr on a lower file: errno \(errno)")
        XCTAssertEqual(setxattr(p + "/README", "user.gone", "x", 1, 0), 0)
        XCTAssertEqual(setxattr(p + "/src", "user.dir", "d", 1, 0), 0, "setxattr on a lower dir: errno \(errno)")
        XCTAssertEqual(errnoOf(setxattr(p + "/README", "user.color", "red", 3, Int32(XATTR_CREATE))), EEXIST)
        XCTAssertEqual(xattr(p + "/README", "user.color"), "blue")
        XCTAssertEqual(xattr(p + "/src", "user.dir"), "d")
        XCTAssertEqual(Set(xattrNames(p + "/README")), ["user.color", "user.gone"])
        XCTAssertEqual(removexattr(p + "/README", "user.gone"), 0)
        XCTAssertEqual(xattrNames(p + "/README"), ["user.color"])
        XCTAssertEqual(errnoOf(getxattr(p + "/README", "user.gone", nil, 0)), ENODATA)
        XCTAssertNil(xattr(workspace + "/README", "user.color"), "the workspace is untouched before commit")
        _ = try fs.commit(a)
        XCTAssertEqual(xattr(workspace + "/README", "user.color"), "blue")
        XCTAssertEqual(xattrNames(workspace + "/README"), ["user.color"])
        XCTAssertEqual(xattr(workspace + "/src", "user.dir"), "d", "a directory's xattrs are committed too")
    }

    /// `ls -l` of the mount root asks for ACL xattrs: "no such attribute" is the answer, not EPERM.
    func testXattrQueriesOnTheMountRootAnswerNoDataNotEPERM() throws {
        let r = lgetxattr(fs.mountPoint, "system.posix_acl_access", nil, 0)
        let e = errnoOf(r)
        XCTAssertTrue(e == ENODATA || e == EOPNOTSUPP, "getxattr on the mount root: errno \(e) (\(String(cString: strerror(e))))")
        XCTAssertGreaterThanOrEqual(llistxattr(fs.mountPoint, nil, 0), 0, "listxattr on the mount root: errno \(errno)")
    }

    func testTheOverlayFormatXattrsAreRefusedAndHidden() throws {
        let a = try branch(), p = path(a)
        XCTAssertNotEqual(setxattr(p + "/README", "user.overlay.opaque", "y", 1, 0), 0, "user.overlay.* cannot be set through a branch")
        XCTAssertNotEqual(setxattr(p + "/src", "user.overlay.redirect", "/x", 2, 0), 0)
        XCTAssertEqual(errnoOf(rmdir(p + "/docs/a/b")), ENOTEMPTY)
        // Remove a lower dir and make it again: the new one is opaque in the delta.
        XCTAssertEqual(unlink(p + "/docs/a/b/deep.txt"), 0)
        XCTAssertEqual(rmdir(p + "/docs/a/b"), 0)
        XCTAssertEqual(mkdir(p + "/docs/a/b", 0o755), 0)
        XCTAssertTrue(xattrNames(p + "/docs/a/b").allSatisfy { !$0.hasPrefix("user.overlay.") }, "listxattr hides the format's xattrs: \(xattrNames(p + "/docs/a/b"))")
        XCTAssertEqual(errnoOf(getxattr(p + "/docs/a/b", "user.overlay.opaque", nil, 0)), ENODATA)
        XCTAssertNotEqual(removexattr(p + "/docs/a/b", "user.overlay.opaque"), 0, "nor removed")
        XCTAssertEqual(listing(p + "/docs/a/b"), [".", ".."], "still opaque")
        _ = try fs.commit(a)
        XCTAssertTrue(xattrNames(workspace + "/docs/a/b").allSatisfy { !$0.hasPrefix("user.overlay.") }, "no format xattr leaks into the workspace")
        XCTAssertTrue(xattrNames(workspace + "/README").isEmpty)
    }

    // MARK: - special files

    func testAFIFOMadeInABranchCarriesDataBetweenAReaderAndAWriter() throws {
        let a = try branch(), p = path(a)
        XCTAssertEqual(mkfifo(p + "/pipe", 0o644), 0, "errno \(errno)")
        XCTAssertEqual(lmode(p + "/pipe"), S_IFIFO)
        let reader = open(p + "/pipe", O_RDONLY | O_NONBLOCK)
        XCTAssertGreaterThanOrEqual(reader, 0, "open read end: errno \(errno)")
        let writer = open(p + "/pipe", O_WRONLY | O_NONBLOCK)
        XCTAssertGreaterThanOrEqual(writer, 0, "open write end: errno \(errno)")
        XCTAssertEqual(write(writer, "through the fifo", 16), 16)
        var pfd = pollfd(fd: reader, events: Int16(POLLIN), revents: 0)
        XCTAssertEqual(poll(&pfd, 1, 10_000), 1)
        var buf = [UInt8](repeating: 0, count: 64)
        let n = read(reader, &buf, buf.count)
        XCTAssertEqual(n, 16)
        XCTAssertEqual(String(decoding: buf.prefix(max(n, 0)), as: UTF8.self), "through the fifo")
        close(writer)
        close(reader)
        _ = try fs.commit(a)
        XCTAssertEqual(lmode(workspace + "/pipe"), S_IFIFO)
    }

    func testAUnixSocketBoundInABranchAcceptsConnections() throws {
        let a = try branch(), p = path(a)
        let sockPath = p + "/s.sock"
        guard sockPath.utf8.count < 107 else { throw XCTSkip("socket path \(sockPath) is longer than sun_path allows") }
        let server = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(server) }
        XCTAssertEqual(withUnixAddress(sockPath) { bind(server, $0, $1) }, 0, "bind in the branch: errno \(errno)")
        XCTAssertEqual(lmode(sockPath), S_IFSOCK)
        XCTAssertEqual(listen(server, 1), 0)
        let client = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(client) }
        XCTAssertEqual(withUnixAddress(sockPath) { connect(client, $0, $1) }, 0, "connect through the branch path: errno \(errno)")
        let conn = accept(server, nil, nil)
        XCTAssertGreaterThanOrEqual(conn, 0)
        defer { close(conn) }
        XCTAssertEqual(write(client, "ping", 4), 4)
        var buf = [UInt8](repeating: 0, count: 8)
        XCTAssertEqual(read(conn, &buf, 8), 4)
        XCTAssertEqual(String(decoding: buf.prefix(4), as: UTF8.self), "ping")
        _ = try fs.commit(a)
        XCTAssertEqual(lmode(workspace + "/s.sock"), S_IFSOCK, "the socket node is carried into the workspace")
    }

    // MARK: - whiteouts

    func testADeletedLowerFileRecreatedWithOtherContentShowsOnlyTheNewContent() throws {
        let a = try branch(), p = path(a)
        XCTAssertEqual(unlink(p + "/src/util.c"), 0)
        XCTAssertFalse(exists(p + "/src/util.c"))
        XCTAssertEqual(errnoOf(open(p + "/src/util.c", O_RDONLY)), ENOENT)
        try put(p + "/src/util.c", "recreated\n")
        XCTAssertEqual(get(p + "/src/util.c"), "recreated\n")
        XCTAssertEqual(lmode(p + "/src/util.c"), S_IFREG)
        _ = try fs.commit(a)
        XCTAssertEqual(get(workspace + "/src/util.c"), "recreated\n")
    }

    func testADeletedLowerDirectoryRecreatedAsAFileIsAFile() throws {
        let a = try branch(), p = path(a)
        XCTAssertEqual(unlink(p + "/docs/a/b/deep.txt"), 0)
        XCTAssertEqual(rmdir(p + "/docs/a/b"), 0)
        XCTAssertEqual(rmdir(p + "/docs/a"), 0)
        XCTAssertEqual(rmdir(p + "/docs"), 0)
        try put(p + "/docs", "now a file\n")
        XCTAssertEqual(lmode(p + "/docs"), S_IFREG)
        XCTAssertEqual(get(p + "/docs"), "now a file\n")
        XCTAssertEqual(errnoOf(open(p + "/docs/a/b/deep.txt", O_RDONLY)), ENOTDIR)
        _ = try fs.commit(a)
        XCTAssertEqual(lmode(workspace + "/docs"), S_IFREG)
        XCTAssertEqual(get(workspace + "/docs"), "now a file\n")
    }

    func testALowerFileReplacedByADirectoryIsADirectory() throws {
        let a = try branch(), p = path(a)
        XCTAssertEqual(unlink(p + "/README"), 0)
        XCTAssertEqual(mkdir(p + "/README", 0o755), 0)
        try put(p + "/README/inside", "inside\n")
        XCTAssertEqual(listing(p + "/README"), [".", "..", "inside"])
        _ = try fs.commit(a)
        XCTAssertEqual(lmode(workspace + "/README"), S_IFDIR)
        XCTAssertEqual(get(workspace + "/README/inside"), "inside\n")
    }

    // MARK: - permissions as another user

    /// The default mount point sits in the 0700 state directory, which uid 65534 cannot
    /// traverse: serve the branches from a mount point it can reach instead.
    func remountForAnotherUser() throws {
        guard access("/usr/bin/setpriv", X_OK) == 0 else { throw XCTSkip("/usr/bin/setpriv is missing: cannot run as uid 65534") }
        fs.close()
        let mnt = root + "/pubmnt"
        XCTAssertEqual(mkdir(mnt, 0o755), 0)
        XCTAssertEqual(chmod(root, 0o755), 0)
        fs = try BranchFS(workspace: workspace, stateDirectory: state, mountPoint: mnt)
    }

    func testAnotherUserCanReadButNotWriteARootFileWithMode0644() throws {
        try remountForAnotherUser()
        let a = try branch(), p = path(a)
        try put(p + "/rootfile", "root data\n")
        XCTAssertEqual(chmod(p + "/rootfile", 0o644), 0)
        XCTAssertEqual(mkdir(p + "/open", 0o777), 0)
        XCTAssertEqual(chmod(p + "/open", 0o777), 0)
        let r = asNobody("""
            cat '\(p)/rootfile' >/dev/null && echo read-branch-file-ok || echo read-branch-file-failed
            cat '\(p)/README' >/dev/null && echo read-lower-file-ok || echo read-lower-file-failed
            ( echo x >> '\(p)/rootfile' ) 2>/dev/null && echo write-branch-file-ok || echo write-branch-file-denied
            ( echo x >> '\(p)/README' ) 2>/dev/null && echo write-lower-file-ok || echo write-lower-file-denied
            ( echo x > '\(p)/src/new-by-nobody' ) 2>/dev/null && echo create-ok || echo create-denied
            ( echo x > '\(p)/open/mine' ) 2>/dev/null && echo create-open-ok || echo create-open-denied
            id -u
            """)
        let lines = r.out.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines, ["read-branch-file-ok", "read-lower-file-ok", "write-branch-file-denied", "write-lower-file-denied",
                               "create-denied", "create-open-ok", "65534"], "stderr: \(r.err)")
        XCTAssertEqual(get(p + "/rootfile"), "root data\n", "the refused write changed nothing")
        XCTAssertEqual(get(p + "/README"), "hello\n")
        var st = stat()
        XCTAssertEqual(stat(p + "/open/mine", &st), 0)
        XCTAssertEqual(st.st_uid, 65534, "a new file belongs to its creator")
        _ = try fs.commit(a)
        XCTAssertEqual(get(workspace + "/README"), "hello\n")
        XCTAssertFalse(exists(workspace + "/src/new-by-nobody"))
        XCTAssertEqual(stat(workspace + "/open/mine", &st), 0)
        XCTAssertEqual(st.st_uid, 65534, "ownership survives the commit")
    }

    /// As on a native filesystem: a write or truncate by a caller without CAP_FSETID clears
    /// setuid, and setgid of a group-executable file; root's own writes keep them. (The
    /// kernel leaves this to the server once it runs with FUSE_HANDLE_KILLPRIV_V2.)
    func testWritesByAnotherUserClearSetuidAndSetgidAndRootsDoNot() throws {
        try remountForAnotherUser()
        let a = try branch(), p = path(a)
        for name in ["written", "truncated", "by-root"] {
            try put(p + "/" + name, "#!/bin/sh\n")
            XCTAssertEqual(chown(p + "/" + name, 65534, 65534), 0)
            XCTAssertEqual(chmod(p + "/" + name, 0o6775), 0)
        }
        XCTAssertEqual(mode(p + "/by-root"), 0o6775, "chmod by root keeps both bits")
        try put(p + "/by-root", "#!/bin/sh\necho root\n")
        XCTAssertEqual(mode(p + "/by-root"), 0o6775, "root's write keeps them")
        let r = asNobody("echo 'echo hi' >> '\(p)/written' && : > '\(p)/truncated' && echo ok")
        XCTAssertEqual(r.out, "ok\n", "stderr: \(r.err)")
        XCTAssertEqual(mode(p + "/written"), 0o775, "a write by the owner clears setuid and setgid")
        XCTAssertEqual(mode(p + "/truncated"), 0o775, "so does a truncate")
        XCTAssertEqual(get(p + "/written"), "#!/bin/sh\necho hi\n")
        _ = try fs.commit(a)
        XCTAssertEqual(mode(workspace + "/written"), 0o775)
        XCTAssertEqual(mode(workspace + "/by-root"), 0o6775)
    }

    func testAnotherUserGetsEACCESWritingARootFile() throws {
        try remountForAnotherUser()
        let a = try branch(), p = path(a)
        // sh reports open(2)'s EACCES of a redirection as "Permission denied".
        let r = asNobody("( : >> '\(p)/README' ) 2>&1; cat '\(p)/README'")
        XCTAssertTrue(r.out.contains("Permission denied"), "expected EACCES, got: \(r.out) \(r.err)")
        XCTAssertTrue(r.out.hasSuffix("hello\n"), "reading works: \(r.out)")
    }
}

// MARK: - helpers (syscall-level, shared by the BranchFS battery)

extension BranchFSTestCase {
    /// errno after a call that returned `r` (0 when it succeeded).
    func errnoOf<T: BinaryInteger>(_ r: T) -> Int32 { r < 0 ? errno : 0 }

    func bytes(_ path: String) -> [UInt8]? { FileManager.default.contents(atPath: path).map { Array($0) } }

    func sizeOf(_ path: String) -> Int? {
        var st = stat()
        return stat(path, &st) == 0 ? Int(st.st_size) : nil
    }

    /// The permission bits of `path` (setuid, setgid and sticky included), or 0 when it is missing.
    func mode(_ path: String) -> mode_t {
        var st = stat()
        return stat(path, &st) == 0 ? st.st_mode & 0o7777 : 0
    }

    /// The file type bits of `path` itself (no symlink following), or 0 when it is missing.
    func lmode(_ path: String) -> mode_t {
        var st = stat()
        return lstat(path, &st) == 0 ? st.st_mode & S_IFMT : 0
    }

    func readLink(_ path: String) -> String? {
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink(path, &buf, buf.count - 1)
        guard n >= 0 else { return nil }
        return String(decoding: buf.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// errno of open(O_WRONLY|O_TRUNC) + write (0 on success); the file must exist.
    func overwrite(_ path: String, _ text: String) -> Int32 {
        let fd = open(path, O_WRONLY | O_TRUNC)
        if fd < 0 { return errno }
        defer { close(fd) }
        return write(fd, text, text.utf8.count) == text.utf8.count ? 0 : errno
    }

    /// errno of open(O_WRONLY|O_APPEND) + write (0 on success).
    func append(_ path: String, _ text: String) -> Int32 {
        let fd = open(path, O_WRONLY | O_APPEND)
        if fd < 0 { return errno }
        defer { close(fd) }
        return write(fd, text, text.utf8.count) == text.utf8.count ? 0 : errno
    }

    /// Every name readdir(3) returns for `path`, `.` and `..` included, sorted; duplicates kept.
    func listing(_ path: String) -> [String] {
        guard let d = opendir(path) else { return ["<opendir errno \(errno)>"] }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            names.append(withUnsafePointer(to: e.pointee.d_name) { String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) })
        }
        return names.sorted()
    }

    func xattr(_ path: String, _ name: String) -> String? {
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = lgetxattr(path, name, &buf, buf.count)
        return n < 0 ? nil : String(decoding: buf.prefix(n), as: UTF8.self)
    }

    func xattrNames(_ path: String) -> [String] {
        var buf = [CChar](repeating: 0, count: 65536)
        let n = llistxattr(path, &buf, buf.count)
        guard n > 0 else { return [] }
        return buf.prefix(n).split(separator: 0).map { String(decoding: $0.map { UInt8(bitPattern: $0) }, as: UTF8.self) }.sorted()
    }

    /// Runs `script` with `sh` as uid/gid 65534 without supplementary groups (setpriv in a
    /// posix_spawned child); stdout and stderr are collected through files in the test's dir.
    func asNobody(_ script: String, timeout: TimeInterval = 60) -> (status: Int32, out: String, err: String) {
        let args = ["--reuid=65534", "--regid=65534", "--clear-groups", "/bin/sh", "-c", script]
        guard let child = try? Spawned("/usr/bin/setpriv", args, dir: root, tag: "nobody", environment: ["PATH": "/usr/bin:/bin", "LC_ALL": "C"]) else {
            return (-1, "", "posix_spawn /usr/bin/setpriv failed")
        }
        guard let status = child.wait(timeout: timeout) else {
            child.signal(SIGKILL)
            _ = child.wait(timeout: 5)
            return (-1, child.stdout, child.stderr + " (killed after \(timeout) s)")
        }
        return (status, child.stdout, child.stderr)
    }
}

/// Runs `body` with a sockaddr_un for `path` (cut to what sun_path holds).
func withUnixAddress(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Int32 {
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &addr.sun_path) { raw in
        let bytes = Array(path.utf8.prefix(raw.count - 1))
        raw.copyBytes(from: bytes)
        raw[bytes.count] = 0
    }
    return withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
}
