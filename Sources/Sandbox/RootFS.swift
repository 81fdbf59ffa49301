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
    case writeFile(String, contents: String, mode: UInt32)
    case tmpfs(String, options: String, flags: UInt)
    case bind(source: String, target: String, writable: Bool, allowDevices: Bool, isFile: Bool)
    case proc(String)
    case devpts(String)

    public var summary: String {
        switch self {
        case let .mkdir(p, _): return "mkdir \(p)"
        case let .symlink(p, to): return "symlink \(p) -> \(to)"
        case let .writeFile(p, _, _): return "write \(p)"
        case let .tmpfs(p, o, _): return "tmpfs \(p) (\(o))"
        case let .bind(s, t, w, _, _): return "bind \(s) -> \(t) (\(w ? "rw" : "ro"))"
        case let .proc(p): return "proc \(p)"
        case let .devpts(p): return "devpts \(p)"
        }
    }
}

/// Plans the minimal root: read-only system directories, an allow-listed
/// /etc, a private /dev with its own devpts, fresh /proc, sized /tmp, and the
/// workspace. Never the host's /, /root, /home, /etc/shadow or /run.
public enum RootFS {
    static let systemDirs = ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"]
    static let devices = ["null", "zero", "full", "random", "urandom", "tty"]

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
            case .directory: ops.append(.bind(source: host, target: host, writable: false, allowDevices: false, isFile: false))
            default: break
            }
            made.insert(host)
        }

        // /etc: generated identity files plus an allow list of the host's entries.
        ops.append(.mkdir("/etc", mode: 0o755))
        made.insert("/etc")
        ops.append(.writeFile("/etc/passwd", contents: "root:x:0:0:root:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n", mode: 0o644))
        ops.append(.writeFile("/etc/group", contents: "root:x:0:\nnogroup:x:65534:\n", mode: 0o644))
        ops.append(.writeFile("/etc/hostname", contents: profile.hostname + "\n", mode: 0o644))
        var etc = profile.etc
        if profile.network == .none {
            ops.append(.writeFile("/etc/hosts", contents: "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t\(profile.hostname)\n", mode: 0o644))
            etc.removeAll { $0 == "hosts" || $0 == "resolv.conf" }
        }
        let generated: Set<String> = ["passwd", "group", "hostname", "shadow", "gshadow"]
        for entry in etc where !generated.contains(entry) {
            let host = "/etc/" + entry
            ensureParents(host)
            switch fileKind(host) {
            case .symlink(let target):
                if target.hasPrefix("/usr/") || (!target.hasPrefix("/") && !target.contains("..")) || target.hasPrefix("../usr/") {
                    ops.append(.symlink(host, pointingTo: target))
                } else if let real = realPath(host), real.hasPrefix("/"), !real.hasPrefix("/etc/shadow") {
                    // e.g. resolv.conf -> /run/...: expose the file itself.
                    let isFile = fileKind(real) != .directory
                    ops.append(.bind(source: real, target: host, writable: false, allowDevices: false, isFile: isFile))
                }
            case .directory: ops.append(.bind(source: host, target: host, writable: false, allowDevices: false, isFile: false))
            case .file: ops.append(.bind(source: host, target: host, writable: false, allowDevices: false, isFile: true))
            case .missing, .other: continue
            }
            made.insert(host)
        }

        // /dev: a small tmpfs with bound device nodes and a private devpts.
        ops.append(.tmpfs("/dev", options: "mode=0755,size=65536k,nr_inodes=4096", flags: CJAIL_MS_NOSUID | CJAIL_MS_NOEXEC))
        for dev in devices where fileKind("/dev/" + dev) != .missing {
            ops.append(.bind(source: "/dev/" + dev, target: "/dev/" + dev, writable: true, allowDevices: true, isFile: true))
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
            ops.append(.bind(source: workspace, target: "/workspace", writable: profile.workspace == .readWrite, allowDevices: false, isFile: false))
        } else {
            ops.append(.tmpfs("/workspace", options: "mode=0755,size=\(profile.limits.tmpBytes)", flags: CJAIL_MS_NOSUID | CJAIL_MS_NODEV))
        }

        for mount in profile.mounts {
            guard fileKind(mount.source) != .missing else {
                throw .hostPath(path: mount.source, reason: "mount source of profile '\(profile.name)' does not exist", errno: .noSuchFileOrDirectory)
            }
            ensureParents(mount.target)
            ops.append(.bind(source: mount.source, target: mount.target, writable: mount.writable, allowDevices: false,
                             isFile: fileKind(mount.source) != .directory))
        }
        return ops
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
