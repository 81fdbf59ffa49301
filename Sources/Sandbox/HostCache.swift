import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Prebuilt pieces of the jail's root, kept on the host under /var/cache/sbx
/// so that each launch binds one directory instead of assembling it from a
/// tmpfs, a dozen small writes and a bind per entry (about 0.4 ms a launch).
///
/// - `dev/`: the device nodes a jail gets (null, zero, full, random, urandom,
///   tty, same numbers as the host's), the usual symlinks and the `pts`
///   mount point.
/// - `etc-<hash>/`: a profile's /etc: generated passwd, group, hostname,
///   hosts, copies of its allow-listed host files and mount points for its
///   allow-listed directories. The hash covers the profile's choices and the
///   identity (inode, size, mtime) of every host file copied, so a changed
///   host file yields a new directory, never a stale one.
///
/// Everything is owned by root and not writable by others; the jail sees it
/// read-only. Directories are built under a temporary name and renamed into
/// place, so concurrent launches never see half of one.
enum HostCache {
    static let root = "/var/cache/sbx"

    /// Creates `root` (0711: jails, which are not host root, must traverse it to reach dev/ and etc-*/).
    static func ensureRoot() -> Bool {
        if mkdir("/var/cache", 0o755) != 0 && errno != EEXIST { return false }
        if mkdir(root, 0o711) != 0 && errno != EEXIST { return false }
        var st = stat()
        guard lstat(root, &st) == 0, st.st_mode & S_IFMT == S_IFDIR, st.st_uid == geteuid() else { return false }
        if st.st_mode & 0o7777 != 0o711 { chmod(root, 0o711) }
        return true
    }

    /// A trusted directory: ours, a real directory, not writable by anyone else.
    static func isTrusted(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0 && st.st_mode & S_IFMT == S_IFDIR && st.st_uid == geteuid() && st.st_mode & 0o022 == 0
    }

    /// The device directory, or nil when it cannot be used (the cache's filesystem is mounted nodev, say).
    static func devDirectory(devices: [String]) -> String? {
        let dir = root + "/dev"
        if isTrusted(dir) { return dir }
        guard ensureRoot(), !isNoDev(root) else { return nil }
        let tmp = dir + ".tmp.\(getpid())"
        removeTree(tmp)
        guard mkdir(tmp, 0o755) == 0 else { return nil }
        var ok = true
        for name in devices {
            var st = stat()
            guard stat("/dev/" + name, &st) == 0, st.st_mode & S_IFMT == S_IFCHR else { continue }
            let path = tmp + "/" + name
            ok = ok && mknod(path, S_IFCHR | 0o666, st.st_rdev) == 0 && chmod(path, 0o666) == 0
        }
        ok = ok && mkdir(tmp + "/pts", 0o755) == 0
        for (name, target) in [("ptmx", "pts/ptmx"), ("shm", "/tmp"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                               ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")] {
            ok = ok && symlink(target, tmp + "/" + name) == 0
        }
        ok = ok && chmod(tmp, 0o755) == 0
        if ok && rename(tmp, dir) == 0 { return dir }
        removeTree(tmp)
        return isTrusted(dir) ? dir : nil
    }

    /// What goes into a profile's /etc.
    struct EtcEntry {
        enum Content { case bytes([UInt8]), copy(String), symlink(String), mountPoint }
        var name: String
        var content: Content
    }

    /// The /etc directory for these entries (built on first use). `identity` must change whenever any
    /// content would: the caller hashes the profile's settings and the host files' inode, size and mtime.
    static func etcDirectory(entries: [EtcEntry], identity: String) -> String? {
        let dir = root + "/etc-" + String(fnv1a64(identity), radix: 16)
        if isTrusted(dir) { return dir }
        guard ensureRoot() else { return nil }
        let tmp = dir + ".tmp.\(getpid())"
        removeTree(tmp)
        guard mkdir(tmp, 0o755) == 0 else { return nil }
        var ok = true
        for entry in entries where ok {
            let path = tmp + "/" + entry.name
            ok = makeParents(of: path, under: tmp)
            switch entry.content {
            case .bytes(let b): ok = ok && FileIO.create(path, b, mode: 0o644)
            case .copy(let source): ok = ok && ((try? FileIO.read(source, limit: RootFS.copyLimit)).map { FileIO.create(path, $0, mode: 0o644) } ?? false)
            case .symlink(let target): ok = ok && symlink(target, path) == 0
            case .mountPoint: ok = ok && mkdir(path, 0o755) == 0
            }
        }
        ok = ok && chmod(tmp, 0o755) == 0
        if ok && rename(tmp, dir) == 0 { return dir }
        removeTree(tmp)
        return isTrusted(dir) ? dir : nil
    }

    static func isNoDev(_ path: String) -> Bool {
        var st = statvfs()
        return statvfs(path, &st) != 0 || st.f_flag & 4 != 0  // ST_NODEV
    }

    static func makeParents(of path: String, under base: String) -> Bool {
        var prefix = base
        let rest = path.dropFirst(base.count + 1).split(separator: "/").dropLast()
        for part in rest {
            prefix += "/" + part
            if mkdir(prefix, 0o755) != 0 && errno != EEXIST { return false }
        }
        return true
    }

    /// rm -r without following symlinks (only ever applied to our own temporary directories).
    static func removeTree(_ path: String) {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        if st.st_mode & S_IFMT == S_IFDIR {
            if let d = opendir(path) {
                while let e = readdir(d) {
                    let name = withUnsafeBytes(of: e.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
                    if name != "." && name != ".." { removeTree(path + "/" + name) }
                }
                closedir(d)
            }
            rmdir(path)
        } else {
            unlink(path)
        }
    }
}
