import CJail
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// One step of assembling the jail's root, applied in order by the C child.
/// Paths are inside the new root; bind sources are host paths (the child
/// reaches them under /oldroot).
public enum MountOp: Equatable, Sendable {
    case mkdir(String, mode: UInt32)
    case symlink(String, pointingTo: String)
    case writeFile(String, contents: [UInt8], mode: UInt32)
    case tmpfs(String, options: String, flags: UInt)
    /// A recursive bind; `attributes` (MOUNT_ATTR_*) are applied to the whole subtree unless 0.
    case bind(source: String, target: String, isFile: Bool, attributes: UInt64)
    case proc(String)
    case devpts(String)
    /// mount_setattr on a mount (and everything below it when recursive).
    case setAttributes(String, attributes: UInt64, recursive: Bool)

    static let readOnly = CJAIL_MOUNT_ATTR_RDONLY | CJAIL_MOUNT_ATTR_NOSUID | CJAIL_MOUNT_ATTR_NODEV
    static let writable = CJAIL_MOUNT_ATTR_NOSUID | CJAIL_MOUNT_ATTR_NODEV

    public var summary: String {
        switch self {
        case let .mkdir(p, _): return "mkdir \(p)"
        case let .symlink(p, to): return "symlink \(p) -> \(to)"
        case let .writeFile(p, _, _): return "write \(p)"
        case let .tmpfs(p, o, _): return "tmpfs \(p) (\(o))"
        case let .bind(s, t, _, a): return "bind \(s) -> \(t)" + (a & CJAIL_MOUNT_ATTR_RDONLY != 0 ? " (ro)" : "")
        case let .proc(p): return "proc \(p)"
        case let .devpts(p): return "devpts \(p)"
        case let .setAttributes(p, a, _): return "set \(a & CJAIL_MOUNT_ATTR_RDONLY != 0 ? "read-only" : "nosuid,nodev") on \(p)"
        }
    }
}

/// Plans the minimal root: read-only system directories, an allow-listed
/// /etc, a private /dev with its own devpts, fresh /proc, sized /tmp, and the
/// workspace. Never the host's /, /root, /home, /etc/shadow or /run.
public enum RootFS {
    static let systemDirs = ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"]
    static let devices = ["null", "zero", "full", "random", "urandom", "tty"]

    /// Host /etc files up to this size are copied into the jail's /etc rather than bound:
    /// a write into tmpfs costs a fraction of a bind mount plus its attribute change.
    static let copyLimit = 256 << 10

    public static func plan(profile: Profile, workspace: String?) throws(SandboxError) -> [MountOp] {
        var ops: [MountOp] = []
        var made: Set<String> = ["/"]
        func ensureParents(_ path: String) {
            var prefix = ""
            for part in path.split(separator: "/").dropLast() {
                prefix += "/" + part
                if made.insert(prefix).inserted { ops.append(.mkdir(prefix, mode: 0o755)) }
            }
        }

        for name in systemDirs {
            let host = "/" + name
            switch fileKind(host) {
            case .symlink(let target): ops.append(.symlink(host, pointingTo: target))
            case .directory: ops.append(.bind(source: host, target: host, isFile: false, attributes: MountOp.readOnly))
            default: break
            }
            made.insert(host)
        }

        // /etc: its own tmpfs holding generated identity files, copies of small allow-listed
        // host files and binds of allow-listed directories; made read-only in one step.
        ops.append(.tmpfs("/etc", options: "mode=0755,size=8m,nr_inodes=4096", flags: CJAIL_MS_NOSUID | CJAIL_MS_NODEV))
        made.insert("/etc")
        func text(_ s: String) -> [UInt8] { Array(s.utf8) }
        ops.append(.writeFile("/etc/passwd", contents: text("root:x:0:0:root:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"), mode: 0o644))
        ops.append(.writeFile("/etc/group", contents: text("root:x:0:\nnogroup:x:65534:\n"), mode: 0o644))
        ops.append(.writeFile("/etc/hostname", contents: text(profile.hostname + "\n"), mode: 0o644))
        var etc = profile.etc
        if profile.network == .none {
            ops.append(.writeFile("/etc/hosts", contents: text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t\(profile.hostname)\n"), mode: 0o644))
            etc.removeAll { $0 == "hosts" || $0 == "resolv.conf" }
        }
        let generated: Set<String> = ["passwd", "group", "hostname", "shadow", "gshadow"]
        for entry in etc where !generated.contains(entry) {
            let host = "/etc/" + entry
            var kind = fileKind(host)
            var source = host
            if case .symlink(let target) = kind {
                if target.hasPrefix("/usr/") || target.hasPrefix("../usr/") || (!target.hasPrefix("/") && !target.contains("..")) {
                    ensureParents(host)
                    ops.append(.symlink(host, pointingTo: target))
                    made.insert(host)
                    continue
                }
                // e.g. resolv.conf -> /run/...: expose what it points to.
                guard let real = realPath(host) else { continue }
                source = real
                kind = fileKind(real)
            }
            switch kind {
            case .directory:
                ensureParents(host)
                ops.append(.bind(source: source, target: host, isFile: false, attributes: 0))
            case .file:
                ensureParents(host)
                if let bytes = readSmallFile(source, limit: copyLimit) {
                    ops.append(.writeFile(host, contents: bytes, mode: 0o644))
                } else {
                    ops.append(.bind(source: source, target: host, isFile: true, attributes: 0))
                }
            default: continue
            }
            made.insert(host)
        }
        ops.append(.setAttributes("/etc", attributes: MountOp.readOnly, recursive: true))

        // /dev: a small tmpfs with bound device nodes and a private devpts.
        ops.append(.tmpfs("/dev", options: "mode=0755,size=65536k,nr_inodes=4096", flags: CJAIL_MS_NOSUID | CJAIL_MS_NOEXEC))
        for dev in devices where fileKind("/dev/" + dev) != .missing {
            ops.append(.bind(source: "/dev/" + dev, target: "/dev/" + dev, isFile: true, attributes: 0))
        }
        ops.append(.devpts("/dev/pts"))
        ops.append(.symlink("/dev/ptmx", pointingTo: "pts/ptmx"))
        ops.append(.mkdir("/dev/shm", mode: 0o1777))
        ops.append(.symlink("/dev/fd", pointingTo: "/proc/self/fd"))
        ops.append(.symlink("/dev/stdin", pointingTo: "/proc/self/fd/0"))
        ops.append(.symlink("/dev/stdout", pointingTo: "/proc/self/fd/1"))
        ops.append(.symlink("/dev/stderr", pointingTo: "/proc/self/fd/2"))
        ops.append(.proc("/proc"))
        ops.append(.tmpfs("/tmp", options: "mode=1777,size=\(profile.limits.tmpBytes)", flags: CJAIL_MS_NOSUID | CJAIL_MS_NODEV))

        if let workspace {
            let attributes = profile.workspace == .readWrite ? MountOp.writable : MountOp.readOnly
            ops.append(.bind(source: workspace, target: "/workspace", isFile: false, attributes: attributes))
        } else {
            ops.append(.tmpfs("/workspace", options: "mode=0755,size=\(profile.limits.tmpBytes)", flags: CJAIL_MS_NOSUID | CJAIL_MS_NODEV))
        }

        for mount in profile.mounts {
            let kind = fileKind(mount.source)
            guard kind != .missing else {
                throw .hostPath(path: mount.source, reason: "mount source of profile '\(profile.name)' does not exist", errno: .noSuchFileOrDirectory)
            }
            ensureParents(mount.target)
            ops.append(.bind(source: mount.source, target: mount.target, isFile: kind != .directory,
                             attributes: mount.writable ? MountOp.writable : MountOp.readOnly))
        }
        return ops
    }

    static func readSmallFile(_ path: String, limit: Int) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG, Int(st.st_size) <= limit else { return nil }
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return nil }
            done += n
        }
        return bytes
    }

    enum FileKind: Equatable {
        case missing, directory, file, other
        case symlink(String)
    }

    static func fileKind(_ path: String) -> FileKind {
        var st = stat()
        guard lstat(path, &st) == 0 else { return .missing }
        switch st.st_mode & S_IFMT {
        case S_IFDIR: return .directory
        case S_IFREG: return .file
        case S_IFLNK:
            var buf = [CChar](repeating: 0, count: 4096)
            let n = readlink(path, &buf, buf.count - 1)
            guard n > 0 else { return .missing }
            return .symlink(String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self))
        default: return .other
        }
    }

    static func realPath(_ path: String) -> String? {
        guard let p = realpath(path, nil) else { return nil }
        defer { free(p) }
        return String(cString: p)
    }
}
