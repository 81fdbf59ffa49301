import CJail
import CSeccomp
import SBXJSON
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A compiled seccomp program: classic BPF instructions, ready for seccomp(2).
public struct SeccompProgram: Sendable, Equatable {
    /// Raw `struct sock_filter` array (8 bytes per instruction).
    public let bytes: [UInt8]
    public var instructionCount: Int { bytes.count / 8 }
}

/// Builds the jail's seccomp filters with libseccomp, in the parent.
///
/// The built-in filter allows by default and denies Docker's default deny
/// list plus everything a jail could use to escape or attack the kernel
/// (io_uring, the new mount API, namespaces, ptrace-likes, keyrings, bpf,
/// perf, userfaultfd, kexec, modules, handle-based opens, chroot) and the
/// terminal-injection ioctls. Other architectures (i386, x32) are killed.
/// An imported Docker/OCI profile becomes a second, stacked filter.
public enum Seccomp {
    /// Syscalls denied with EPERM. Names unknown on this architecture are skipped.
    public static let deniedSyscalls: [String] = [
        // Docker's default profile blocks these
        "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module", "delete_module",
        "finit_module", "get_kernel_syms", "get_mempolicy", "init_module", "ioperm", "iopl", "kcmp",
        "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie", "mbind", "mount", "move_pages",
        "name_to_handle_at", "nfsservctl", "open_by_handle_at", "perf_event_open", "pivot_root",
        "process_vm_readv", "process_vm_writev", "ptrace", "query_module", "quotactl", "quotactl_fd",
        "reboot", "request_key", "set_mempolicy", "setns", "settimeofday", "stime", "swapon", "swapoff",
        "sysfs", "_sysctl", "umount", "umount2", "unshare", "uselib", "userfaultfd", "ustat", "vm86",
        "vm86old", "syslog", "vhangup", "fanotify_init",
        // and beyond Docker
        "io_uring_setup", "io_uring_enter", "io_uring_register",
        "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr", "open_tree_attr",
        "chroot", "pidfd_getfd", "process_madvise", "kexec_file_load",
    ]

    static let namespaceCloneFlags: UInt64 =
        [CJAIL_CLONE_NEWNS, CJAIL_CLONE_NEWUTS, CJAIL_CLONE_NEWIPC, CJAIL_CLONE_NEWUSER, CJAIL_CLONE_NEWPID,
         CJAIL_CLONE_NEWNET, CJAIL_CLONE_NEWCGROUP, CJAIL_CLONE_NEWTIME].reduce(0) { $0 | UInt64($1) }

    static let TIOCSTI: UInt64 = 0x5412
    static let TIOCLINUX: UInt64 = 0x541C

    /// Personalities Docker allows: PER_LINUX, PER_LINUX32, UNAME26 variants, and the query.
    static let allowedPersonalities: [UInt64] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff]

    nonisolated(unsafe) private static var cache: [UInt64: [SeccompProgram]] = [:]
    private static let cacheLock = Mutex()
    /// Compiled filters survive between `sbx run`s here (root-owned, 0700): compiling costs
    /// about half a millisecond, reading the cached program a few microseconds.
    public static let cacheDirectory = "/var/cache/sbx/seccomp"
    static let formatVersion = "sbx-seccomp-2"

    /// The filters for a profile, compiled once per profile (cached in memory and on disk).
    public static func filters(for profile: Profile) throws(SandboxError) -> [SeccompProgram] {
        var key = formatVersion + "\n" + libseccompVersion + "\n" + deniedSyscalls.joined(separator: ",")
        key += "\n" + profile.seccompDeny.joined(separator: ",")
        for file in profile.seccompImports {
            key += "\n" + file + "\n" + String(decoding: (try? FileIO.read(file, limit: 4 << 20)) ?? [], as: UTF8.self)
        }
        let hash = fnv1a64(key)
        if let cached = cacheLock.withLock({ cache[hash] }) { return cached }
        let path = cacheDirectory + "/" + String(hash, radix: 16) + ".bpf"
        if let programs = loadCached(path) {
            cacheLock.withLock { cache[hash] = programs }
            return programs
        }
        var programs = [try builtIn(extraDeny: profile.seccompDeny), personalityFilter()]
        for file in profile.seccompImports {
            programs.append(try importOCI(file: file))
        }
        cacheLock.withLock { cache[hash] = programs }
        storeCached(programs, at: path)
        return programs
    }

    static var libseccompVersion: String {
        guard let v = seccomp_version() else { return "?" }
        return "\(v.pointee.major).\(v.pointee.minor).\(v.pointee.micro)"
    }

    /// Reads a cached program set, trusting only a root-owned file nobody else can write.
    static func loadCached(_ path: String) -> [SeccompProgram]? {
        var st = stat()
        guard lstat(path, &st) == 0, st.st_uid == geteuid(), st.st_mode & 0o022 == 0,
              let bytes = try? FileIO.read(path, limit: 1 << 20, followSymlinks: false) else { return nil }
        // Format: repeated [u32 little-endian byte count][BPF bytes].
        var programs: [SeccompProgram] = []
        var i = 0
        while i + 4 <= bytes.count {
            let n = Int(bytes[i]) | Int(bytes[i + 1]) << 8 | Int(bytes[i + 2]) << 16 | Int(bytes[i + 3]) << 24
            i += 4
            guard n > 0, n % 8 == 0, i + n <= bytes.count else { return nil }
            programs.append(SeccompProgram(bytes: Array(bytes[i..<i + n])))
            i += n
        }
        return i == bytes.count && !programs.isEmpty ? programs : nil
    }

    static func storeCached(_ programs: [SeccompProgram], at path: String) {
        guard ensurePrivateDirectory(cacheDirectory) else { return }
        var bytes: [UInt8] = []
        for p in programs {
            let n = UInt32(p.bytes.count)
            bytes += [UInt8(n & 0xff), UInt8(n >> 8 & 0xff), UInt8(n >> 16 & 0xff), UInt8(n >> 24)]
            bytes += p.bytes
        }
        let tmp = path + ".tmp.\(getpid())"
        let ok = FileIO.create(tmp, bytes, mode: 0o600)
        if !ok || rename(tmp, path) != 0 { unlink(tmp); return }
        trimCache(keeping: path)
    }

    /// A cache, not a store: past 64 programs (profiles come and go, tests make many), start over.
    static func trimCache(keeping path: String) {
        guard let d = opendir(cacheDirectory) else { return }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            if name.hasSuffix(".bpf") { names.append(name) }
        }
        closedir(d)
        guard names.count > 64 else { return }
        for name in names where cacheDirectory + "/" + name != path { unlink(cacheDirectory + "/" + name) }
    }

    /// Creates the directory chain 0700 and checks each level is ours and not writable by others.
    static func ensurePrivateDirectory(_ path: String) -> Bool {
        var prefix = ""
        for part in path.split(separator: "/") {
            prefix += "/" + part
            if mkdir(prefix, 0o700) != 0 && errno != EEXIST { return false }
        }
        var st = stat()
        return lstat(path, &st) == 0 && st.st_mode & S_IFMT == S_IFDIR && st.st_uid == geteuid() && st.st_mode & 0o077 == 0
    }


    /// The built-in deny-list filter.
    public static func builtIn(extraDeny: [String] = []) throws(SandboxError) -> SeccompProgram {
        try builtInContext(extraDeny: extraDeny).export()
    }

    /// libseccomp's pseudo-filter-code listing of the built-in filter (for reading, not loading).
    public static func builtInPseudoCode(extraDeny: [String] = []) throws(SandboxError) -> String {
        try builtInContext(extraDeny: extraDeny).pseudoCode()
    }

    static func builtInContext(extraDeny: [String]) throws(SandboxError) -> SeccompContext {
        let ctx = try SeccompContext(defaultAction: sbx_scmp_act_allow())
        let eperm = sbx_scmp_act_errno(UInt16(EPERM))
        for name in extraDeny where seccomp_syscall_resolve_name(name) == __NR_SCMP_ERROR {
            throw .seccomp(reason: "unknown syscall '\(name)' in seccomp.deny", errno: nil)
        }
        for name in deniedSyscalls + extraDeny {
            try ctx.add(eperm, seccomp_syscall_resolve_name(name), [], ignoreExisting: true)
        }
        // clone with any namespace flag, one rule per bit ("any bit set").
        // clone3 passes its flags in memory, out of BPF's reach: ENOSYS makes libc fall back to clone.
        let clone = seccomp_syscall_resolve_name("clone")
        for bit in bits(of: namespaceCloneFlags) {
            try ctx.add(eperm, clone, [cmp(0, SCMP_CMP_MASKED_EQ, bit, bit)])
        }
        try ctx.add(sbx_scmp_act_errno(UInt16(ENOSYS)), seccomp_syscall_resolve_name("clone3"), [])
        // Terminal injection, compared on the low 32 bits (the kernel ignores the upper half).
        let ioctl = seccomp_syscall_resolve_name("ioctl")
        for request in [TIOCSTI, TIOCLINUX] {
            try ctx.add(eperm, ioctl, [cmp(1, SCMP_CMP_MASKED_EQ, 0xffff_ffff, request)])
        }
        return ctx
    }

    /// personality(2), as Docker allows it: PER_LINUX, PER_LINUX32, UNAME26 (0, 0x8, 0x20000,
    /// 0x20008) and the query 0xffffffff; anything else (ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, ...)
    /// fails with EPERM. libseccomp compares an argument only once per rule, which makes this
    /// 240 instructions there (loading them cost 150 us a launch); by hand it is 8, stacked as
    /// a second filter. Foreign architectures are left to the first filter, which kills them.
    public static func personalityFilter() -> SeccompProgram {
        let nr = UInt32(bitPattern: seccomp_syscall_resolve_name("personality"))
        let ldAbs: UInt16 = 0x20, jeq: UInt16 = 0x15, andK: UInt16 = 0x54, ret: UInt16 = 0x06
        let allow: UInt32 = 0x7fff_0000, eperm: UInt32 = 0x0005_0000 | UInt32(EPERM)
        let insns: [(UInt16, UInt8, UInt8, UInt32)] = [
            (ldAbs, 0, 0, 0),              // 0: A = seccomp_data.nr
            (jeq, 0, 5, nr),               // 1: personality? else allow (7)
            (ldAbs, 0, 0, 16),             // 2: A = low 32 bits of args[0] (the kernel ignores the rest)
            (jeq, 3, 0, 0xffff_ffff),      // 3: the query: allow (7)
            (andK, 0, 0, ~UInt32(0x20008)),// 4: A &= everything but PER_LINUX32 and UNAME26
            (jeq, 1, 0, 0),                // 5: nothing else set: allow (7)
            (ret, 0, 0, eperm),            // 6
            (ret, 0, 0, allow),            // 7
        ]
        var bytes: [UInt8] = []
        for (code, jt, jf, k) in insns {
            bytes += [UInt8(code & 0xff), UInt8(code >> 8), jt, jf, UInt8(k & 0xff), UInt8(k >> 8 & 0xff), UInt8(k >> 16 & 0xff), UInt8(k >> 24)]
        }
        return SeccompProgram(bytes: bytes)
    }

    static func bits(of mask: UInt64) -> [UInt64] {
        (0..<64).map { UInt64(1) << UInt64($0) }.filter { mask & $0 != 0 }
    }
}

/// FNV-1a, 64 bit: a stable name for a cache entry (not a security boundary: only root writes the cache).
func fnv1a64(_ s: String) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in s.utf8 {
        h ^= UInt64(b)
        h = h &* 0x100_0000_01b3
    }
    return h
}

func cmp(_ arg: UInt32, _ op: scmp_compare, _ a: UInt64, _ b: UInt64) -> scmp_arg_cmp {
    scmp_arg_cmp(arg: arg, op: op, datum_a: a, datum_b: b)
}

// MARK: - libseccomp context

/// Owns one scmp_filter_ctx.
final class SeccompContext {
    let ctx: scmp_filter_ctx

    init(defaultAction: UInt32) throws(SandboxError) {
        guard let ctx = seccomp_init(defaultAction) else { throw .seccomp(reason: "seccomp_init failed", errno: nil) }
        self.ctx = ctx
        // Any architecture other than the native one (i386 via int 0x80, x32) dies.
        let rc = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, sbx_scmp_act_kill_process())
        if rc < 0 { seccomp_release(ctx); throw .seccomp(reason: "cannot set the bad-architecture action", errno: Errno(rawValue: -rc)) }
        // We load the exported program ourselves, after PR_SET_NO_NEW_PRIVS.
        _ = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0)
    }

    deinit { seccomp_release(ctx) }

    /// Adds one rule; its comparisons must all hold (each on a different argument).
    func add(_ action: UInt32, _ nr: Int32, _ cmps: [scmp_arg_cmp], ignoreExisting: Bool = false) throws(SandboxError) {
        guard nr != __NR_SCMP_ERROR else { return }
        var all = cmps
        let rc = all.withUnsafeMutableBufferPointer { buf in
            seccomp_rule_add_array(ctx, action, nr, UInt32(buf.count), buf.baseAddress)
        }
        if rc < 0 && !(ignoreExisting && rc == -EEXIST) {
            let name = seccomp_syscall_resolve_num_arch(sbx_scmp_arch_native(), nr).map { p in
                defer { free(p) }
                return String(cString: p)
            } ?? "#\(nr)"
            throw .seccomp(reason: "cannot add a rule for \(name)", errno: Errno(rawValue: -rc))
        }
    }

    func export() throws(SandboxError) -> SeccompProgram {
        let fd = cjail_memfd("sbx-seccomp")
        guard fd >= 0 else { throw .seccomp(reason: "memfd_create", errno: Errno(rawValue: errno)) }
        defer { close(fd) }
        let rc = seccomp_export_bpf(ctx, fd)
        guard rc >= 0 else { throw .seccomp(reason: "seccomp_export_bpf", errno: Errno(rawValue: -rc)) }
        let size = lseek(fd, 0, SEEK_END)
        var bytes = [UInt8](repeating: 0, count: Int(size))
        let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, Int(size), 0) }
        guard n == size, size % 8 == 0, size / 8 <= 4096 else { throw .seccomp(reason: "unexpected BPF export of \(size) bytes", errno: nil) }
        return SeccompProgram(bytes: bytes)
    }

    func pseudoCode() -> String {
        let fd = cjail_memfd("sbx-seccomp-pfc")
        defer { close(fd) }
        _ = seccomp_export_pfc(ctx, fd)
        let size = lseek(fd, 0, SEEK_END)
        var bytes = [UInt8](repeating: 0, count: Int(size))
        _ = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, Int(size), 0) }
        return String(decoding: bytes, as: UTF8.self)
    }
}


/// A tiny pthread mutex (Foundation-free).
final class Mutex: @unchecked Sendable {
    private var m = pthread_mutex_t()
    init() { pthread_mutex_init(&m, nil) }
    deinit { pthread_mutex_destroy(&m) }
    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(&m)
        defer { pthread_mutex_unlock(&m) }
        return try body()
    }
}
