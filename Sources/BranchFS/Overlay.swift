import CBranchFS

#if canImport(Glibc)
import Glibc
#endif

/// A failed syscall inside a layer: the errno a FUSE handler replies with, plus what failed.
struct FSError: Error, CustomStringConvertible {
    let errno: Int32
    let what: String
    init(_ errno: Int32, _ what: String = "") { self.errno = errno; self.what = what }
    static func last(_ what: String) -> FSError { FSError(Glibc.errno, what) }
    var description: String { "\(what): \(String(cString: strerror(errno))) (errno \(errno))" }
}

/// The on-disk delta format, kernel overlayfs's own: a deleted name is a whiteout (a character
/// device 0/0), a directory that hides everything below it carries the `user.overlay.opaque`
/// xattr (the variant overlayfs honours inside a user namespace with `userxattr`). The same
/// layers can therefore be stacked by the kernel.
enum Overlay {
    static let opaqueXattr = "user.overlay.opaque"
    /// Xattr namespaces that belong to the format, never to the files in a branch.
    static func isPrivateXattr(_ name: String) -> Bool {
        name.hasPrefix("user.overlay.") || name.hasPrefix("trusted.overlay.")
    }

    static func isWhiteout(_ st: stat) -> Bool { cbfs_is_whiteout(st.st_mode, UInt64(st.st_rdev)) != 0 }

    static func lstat(_ dirfd: Int32, _ rel: String) -> stat? {
        var st = stat()
        return fstatat(dirfd, rel, &st, AT_SYMLINK_NOFOLLOW) == 0 ? st : nil
    }

    static func isOpaque(_ dirfd: Int32, _ rel: String) -> Bool {
        var v: UInt8 = 0
        let fd = openat(dirfd, rel, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return fgetxattr(fd, opaqueXattr, &v, 1) == 1 && v == UInt8(ascii: "y")
    }

    static func setOpaque(_ dirfd: Int32, _ rel: String) throws(FSError) {
        let fd = openat(dirfd, rel, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { throw .last("open \(rel)") }
        defer { close(fd) }
        guard fsetxattr(fd, opaqueXattr, "y", 1, 0) == 0 else { throw .last("set opaque on \(rel)") }
    }

    static func makeWhiteout(_ dirfd: Int32, _ rel: String) throws(FSError) {
        guard cbfs_mknod_whiteout(dirfd, rel) == 0 else { throw .last("whiteout \(rel)") }
    }

    /// Removes `rel` under `dirfd` whatever it is, a whole tree included; a missing path is fine
    /// (recovery replays removals).
    static func removeTree(_ dirfd: Int32, _ rel: String) throws(FSError) {
        guard let st = lstat(dirfd, rel) else { return }
        if st.st_mode & S_IFMT != S_IFDIR {
            guard unlinkat(dirfd, rel, 0) == 0 || errno == ENOENT else { throw .last("unlink \(rel)") }
            return
        }
        for name in try listNames(dirfd, rel) { try removeTree(dirfd, rel + "/" + name) }
        guard unlinkat(dirfd, rel, AT_REMOVEDIR) == 0 || errno == ENOENT else { throw .last("rmdir \(rel)") }
    }

    /// Entry names of directory `rel` (without `.` and `..`).
    static func listNames(_ dirfd: Int32, _ rel: String) throws(FSError) -> [String] {
        try listEntries(dirfd, rel).map(\.name)
    }

    static func listEntries(_ dirfd: Int32, _ rel: String) throws(FSError) -> [(name: String, type: UInt8, ino: UInt64)] {
        let fd = openat(dirfd, rel.isEmpty ? "." : rel, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { throw .last("open directory \(rel)") }
        guard let dir = fdopendir(fd) else { close(fd); throw .last("fdopendir \(rel)") }
        defer { closedir(dir) }
        var out: [(String, UInt8, UInt64)] = []
        while let e = readdir(dir) {
            let name = withUnsafePointer(to: e.pointee.d_name) { String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) }
            if name == "." || name == ".." { continue }
            out.append((name, e.pointee.d_type, UInt64(e.pointee.d_ino)))
        }
        return out
    }

    /// Copies the xattrs of `src` onto `dst` (both fds), skipping the format's own.
    static func copyXattrs(from src: Int32, to dst: Int32) {
        for (name, value) in xattrs(src) { _ = fsetxattr(dst, name, value, value.count, 0) }
    }

    /// Makes the xattrs of `dst` exactly those of `src` (the format's own left alone); returns
    /// whether anything changed.
    @discardableResult
    static func syncXattrs(from src: Int32, to dst: Int32) -> Bool {
        let want = xattrs(src), have = xattrs(dst)
        guard want != have else { return false }
        for name in have.keys where want[name] == nil { _ = fremovexattr(dst, name) }
        for (name, value) in want where have[name] != value { _ = fsetxattr(dst, name, value, value.count, 0) }
        return true
    }

    /// The xattrs of an open file, without the format's own.
    static func xattrs(_ fd: Int32) -> [String: [UInt8]] {
        let size = flistxattr(fd, nil, 0) // most files have none: no buffers then
        guard size > 0 else { return [:] }
        var names = [CChar](repeating: 0, count: size + 1024)
        let n = flistxattr(fd, &names, names.count)
        guard n > 0 else { return [:] }
        var out: [String: [UInt8]] = [:]
        var value = [UInt8](repeating: 0, count: 65536)
        var start = 0
        for i in 0..<n where names[i] == 0 {
            let name = names[start..<i].withUnsafeBufferPointer { String(decoding: UnsafeRawBufferPointer($0), as: UTF8.self) }
            start = i + 1
            if isPrivateXattr(name) { continue }
            let len = fgetxattr(fd, name, &value, value.count)
            if len >= 0 { out[name] = Array(value[0..<len]) }
        }
        return out
    }

    /// Changes only what differs between `have` and `want` (owner, mode, times) on `rel`.
    static func updateMetadata(_ dirfd: Int32, _ rel: String, have: stat, want: stat) {
        if want.st_uid != have.st_uid || want.st_gid != have.st_gid {
            _ = fchownat(dirfd, rel, want.st_uid, want.st_gid, AT_SYMLINK_NOFOLLOW)
        }
        if want.st_mode & 0o7777 != have.st_mode & 0o7777 || want.st_uid != have.st_uid || want.st_gid != have.st_gid {
            _ = fchmodat(dirfd, rel, want.st_mode & 0o7777, 0) // chown clears setuid/setgid bits
        }
        var times = [want.st_atim, want.st_mtim]
        _ = utimensat(dirfd, rel, &times, AT_SYMLINK_NOFOLLOW)
    }

    /// Sets owner, mode and times of `rel` (no symlink following) to those of `st`.
    static func applyMetadata(_ dirfd: Int32, _ rel: String, _ st: stat) {
        _ = fchownat(dirfd, rel, st.st_uid, st.st_gid, AT_SYMLINK_NOFOLLOW)
        if st.st_mode & S_IFMT != S_IFLNK { _ = fchmodat(dirfd, rel, st.st_mode & 0o7777, 0) }
        var times = [st.st_atim, st.st_mtim]
        _ = utimensat(dirfd, rel, &times, AT_SYMLINK_NOFOLLOW)
    }

    /// Copies one non-directory entry `srcRel` of `srcDir` to `dstRel` of `dstDir` with its data
    /// (copy_file_range), owner, mode, times and xattrs. `dstRel` must not exist.
    static func copyEntry(_ srcDir: Int32, _ srcRel: String, _ st: stat, to dstDir: Int32, _ dstRel: String, data: Bool = true) throws(FSError) {
        switch st.st_mode & S_IFMT {
        case S_IFREG:
            let src = openat(srcDir, srcRel, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
            guard src >= 0 else { throw .last("open \(srcRel)") }
            defer { close(src) }
            let dst = openat(dstDir, dstRel, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, st.st_mode & 0o7777)
            guard dst >= 0 else { throw .last("create \(dstRel)") }
            defer { close(dst) }
            if data {
                let r = cbfs_copy_data(src, dst, UInt64(st.st_size))
                guard r == 0 else { unlinkat(dstDir, dstRel, 0); throw FSError(-r, "copy \(srcRel)") }
            }
            copyXattrs(from: src, to: dst)
        case S_IFLNK:
            guard let target = readlink(srcDir, srcRel) else { throw .last("readlink \(srcRel)") }
            guard symlinkat(target, dstDir, dstRel) == 0 else { throw .last("symlink \(dstRel)") }
        case S_IFDIR:
            guard mkdirat(dstDir, dstRel, st.st_mode & 0o7777) == 0 else { throw .last("mkdir \(dstRel)") }
            let src = openat(srcDir, srcRel, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)
            let dst = openat(dstDir, dstRel, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)
            if src >= 0 && dst >= 0 { copyXattrs(from: src, to: dst) }
            if src >= 0 { close(src) }
            if dst >= 0 { close(dst) }
        default: // FIFOs, sockets, device nodes (whiteouts included)
            guard cbfs_mknodat(dstDir, dstRel, st.st_mode, UInt64(st.st_rdev)) == 0 else { throw .last("mknod \(dstRel)") }
        }
        applyMetadata(dstDir, dstRel, st)
    }

    static func readlink(_ dirfd: Int32, _ rel: String) -> String? {
        var buf = [UInt8](repeating: 0, count: Int(PATH_MAX))
        let n = buf.withUnsafeMutableBytes { readlinkat(dirfd, rel, $0.baseAddress!.assumingMemoryBound(to: CChar.self), $0.count) }
        guard n >= 0 else { return nil }
        return String(decoding: buf[0..<n], as: UTF8.self)
    }

    /// The whole content of a small file (registry, mountinfo); nil if it cannot be opened.
    static func readFile(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            bytes += chunk[0..<n]
        }
        return bytes
    }

    /// `count` bytes of `fd` from `offset`; nil on an error or if the file ends first.
    static func readExactly(_ fd: Int32, count: Int, at offset: Int) -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, count - done, off_t(offset + done)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return nil }
            done += n
        }
        return bytes
    }

    /// Writes all of `bytes` to `fd` at `offset`; false (errno set) on an error.
    static func writeAll(_ fd: Int32, _ bytes: [UInt8], at offset: Int) -> Bool {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress! + done, $0.count - done, off_t(offset + done)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return false }
            done += n
        }
        return true
    }

    static func openDirectory(_ path: String) throws(FSError) -> Int32 {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw .last("open \(path)") }
        return fd
    }
}

extension String {
    /// `a/b` + `c` = `a/b/c`; the layer root is the empty path.
    func appending(component name: String) -> String { isEmpty ? name : self + "/" + name }
    var parentPath: String { lastIndex(of: "/").map { String(self[..<$0]) } ?? "" }
    var lastComponent: String { lastIndex(of: "/").map { String(self[index(after: $0)...]) } ?? self }
}
