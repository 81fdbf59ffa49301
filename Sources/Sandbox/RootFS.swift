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
        var made: [String] = ["/"]
        func ensureParents(_ path: String) {
            var prefix = ""
            for part in path.split(separator: "/").dropLast() {
                prefix += "/" + part
                if made.insertNew(prefix) { ops.append(.mkdir(prefix, mode: 0o755)) }
            }
        }

        for name in systemDirs {
            let host = "/" + name
            switch fileKind(host) {
            case .symlink(let target): ops.append(.symlink(host, pointingTo: target))
            case .directory: ops.append(.bind(source: host, target: host, isFile: false, attributes: MountOp.readOnly))
            default: break
            }
            _ = made.insertNew(host)
        }

        planEtc(profile: profile, ops: &ops, made: &made)
        planDev(ops: &ops)
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

    /// Generated identity files of every jail's /etc.
    static func generatedEtc(_ profile: Profile) -> [(String, [UInt8])] {
        var files: [(String, [UInt8])] = [
            ("passwd", Array("root:x:0:0:root:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n".utf8)),
            ("group", Array("root:x:0:\nnogroup:x:65534:\n".utf8)),
            ("hostname", Array((profile.hostname + "\n").utf8)),
        ]
        if profile.network == .none {
            files.append(("hosts", Array("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t\(profile.hostname)\n".utf8)))
        }
        return files
    }

    /// Where an allow-listed /etc symlink may lead: system and runtime configuration, never
    /// a home, /root, or a sensitive /etc file.
    static func exposableEtcTarget(_ real: String) -> Bool {
        if real.hasPrefix("/etc/") { return etcEntryProblem(String(real.dropFirst(5))) == nil }
        return ["/usr/", "/run/", "/var/run/", "/var/lib/"].contains { real.hasPrefix($0) }
    }

    /// The profile's allow-listed host /etc entries, classified.
    enum EtcSource {
        case symlink(String)
        case file(String, stat)
        case directory(String)
    }

    static func etcSources(_ profile: Profile) -> [(String, EtcSource)] {
        let generated = ["passwd", "group", "hostname", "shadow", "gshadow"]
        var out: [(String, EtcSource)] = []
        for entry in profile.etc where !generated.contains(entry) {
            if profile.network == .none && (entry == "hosts" || entry == "resolv.conf") { continue }
            let host = "/etc/" + entry
            var kind = fileKind(host)
            var source = host
            if case .symlink(let target) = kind {
                if target.hasPrefix("/usr/") || target.hasPrefix("../usr/") || (!target.hasPrefix("/") && !target.contains("..")) {
                    out.append((entry, .symlink(target)))
                    continue
                }
                // e.g. resolv.conf -> /run/...: expose what it points to, if that is not a secret.
                guard let real = realPath(host), exposableEtcTarget(real) else { continue }
                source = real
                kind = fileKind(real)
            }
            switch kind {
            case .directory: out.append((entry, .directory(source)))
            case .file:
                var st = stat()
                if stat(source, &st) == 0 { out.append((entry, .file(source, st))) }
            default: continue
            }
        }
        return out
    }

    /// /etc as one bind of a cached directory, plus binds of allow-listed directories into it.
    static func planEtc(profile: Profile, ops: inout [MountOp], made: inout [String]) {
        let generated = generatedEtc(profile)
        let sources = etcSources(profile)
        var entries: [HostCache.EtcEntry] = generated.map { .init(name: $0.0, content: .bytes($0.1)) }
        var identity = "sbx-etc-1\n" + generated.map { $0.0 + "=" + String(decoding: $0.1, as: UTF8.self) }.joined(separator: "\n")
        var dirBinds: [(String, String)] = []
        for (name, source) in sources {
            switch source {
            case .symlink(let target):
                entries.append(.init(name: name, content: .symlink(target)))
                identity += "\nL \(name) \(target)"
            case let .file(path, st) where Int(st.st_size) <= copyLimit:
                entries.append(.init(name: name, content: .copy(path)))
                identity += "\nC \(name) \(path) \(st.st_dev) \(st.st_ino) \(st.st_size) \(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec)"
            case let .file(path, _):
                entries.append(.init(name: name, content: .bytes([])))
                identity += "\nB \(name)"
                ops.append(.bind(source: path, target: "/etc/" + name, isFile: true, attributes: 0))
            case .directory(let path):
                entries.append(.init(name: name, content: .mountPoint))
                identity += "\nD \(name)"
                dirBinds.append((path, "/etc/" + name))
            }
        }
        guard let dir = HostCache.etcDirectory(entries: entries, identity: identity) else {
            return assembleEtc(profile: profile, generated: generated, sources: sources, ops: &ops, made: &made)
        }
        // The large-file binds queued above must come after /etc itself.
        let fileBinds = ops.filter { if case .bind(_, let t, true, _) = $0 { return t.hasPrefix("/etc/") }; return false }
        ops.removeAll { if case .bind(_, let t, true, _) = $0 { return t.hasPrefix("/etc/") }; return false }
        ops.append(.bind(source: dir, target: "/etc", isFile: false, attributes: 0))
        ops += fileBinds
        for (source, target) in dirBinds { ops.append(.bind(source: source, target: target, isFile: false, attributes: 0)) }
        ops.append(.setAttributes("/etc", attributes: MountOp.readOnly, recursive: true))
        _ = made.insertNew("/etc")
    }

    /// Fallback when the cache cannot be written: a tmpfs /etc assembled at every launch.
    static func assembleEtc(profile: Profile, generated: [(String, [UInt8])], sources: [(String, EtcSource)],
                            ops: inout [MountOp], made: inout [String]) {
        ops.append(.tmpfs("/etc", options: "mode=0755,size=8m,nr_inodes=4096", flags: CJAIL_MS_NOSUID | CJAIL_MS_NODEV))
        _ = made.insertNew("/etc")
        func ensureParents(_ path: String) {
            var prefix = ""
            for part in path.split(separator: "/").dropLast() {
                prefix += "/" + part
                if made.insertNew(prefix) { ops.append(.mkdir(prefix, mode: 0o755)) }
            }
        }
        for (name, bytes) in generated { ops.append(.writeFile("/etc/" + name, contents: bytes, mode: 0o644)) }
        for (name, source) in sources {
            let path = "/etc/" + name
            ensureParents(path)
            switch source {
            case .symlink(let target): ops.append(.symlink(path, pointingTo: target))
            case .file(let host, _):
                if let bytes = try? FileIO.read(host, limit: copyLimit, followSymlinks: false) {
                    ops.append(.writeFile(path, contents: bytes, mode: 0o644))
                } else {
                    ops.append(.bind(source: host, target: path, isFile: true, attributes: 0))
                }
            case .directory(let host): ops.append(.bind(source: host, target: path, isFile: false, attributes: 0))
            }
        }
        ops.append(.setAttributes("/etc", attributes: MountOp.readOnly, recursive: true))
    }

    /// /dev as one read-only bind of the cached device directory plus a private devpts;
    /// without the cache, a tmpfs with a bind per device.
    static func planDev(ops: inout [MountOp]) {
        if let dir = HostCache.devDirectory(devices: devices) {
            ops.append(.bind(source: dir, target: "/dev", isFile: false,
                             attributes: CJAIL_MOUNT_ATTR_RDONLY | CJAIL_MOUNT_ATTR_NOSUID | CJAIL_MOUNT_ATTR_NOEXEC))
            ops.append(.devpts("/dev/pts"))
            return
        }
        ops.append(.tmpfs("/dev", options: "mode=0755,size=65536k,nr_inodes=4096", flags: CJAIL_MS_NOSUID | CJAIL_MS_NOEXEC))
        for dev in devices where fileKind("/dev/" + dev) != .missing {
            ops.append(.bind(source: "/dev/" + dev, target: "/dev/" + dev, isFile: true, attributes: 0))
        }
        ops.append(.devpts("/dev/pts"))
        ops.append(.symlink("/dev/ptmx", pointingTo: "pts/ptmx"))
        ops.append(.symlink("/dev/shm", pointingTo: "/tmp"))
        ops.append(.symlink("/dev/fd", pointingTo: "/proc/self/fd"))
        ops.append(.symlink("/dev/stdin", pointingTo: "/proc/self/fd/0"))
        ops.append(.symlink("/dev/stdout", pointingTo: "/proc/self/fd/1"))
        ops.append(.symlink("/dev/stderr", pointingTo: "/proc/self/fd/2"))
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

extension Array where Element == String {
    /// Set-like insert for the handful of paths a plan tracks (cheaper at start-up than a Set).
    mutating func insertNew(_ s: String) -> Bool {
        if contains(s) { return false }
        append(s)
        return true
    }
}
