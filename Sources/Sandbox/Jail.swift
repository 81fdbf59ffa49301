import CCap
import CJail
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// What to run and where.
public struct JailRequest: Sendable {
    public var profile: Profile
    public var argv: [String]
    /// Host directory bound at /workspace; nil gives an empty private tmpfs.
    public var workspace: String?
    /// Working directory inside the jail.
    public var cwd: String = "/workspace"
    /// Variables added to (and overriding) the profile's environment.
    public var env: [String: String] = [:]
    /// fd the jail reads as stdin; nil means /dev/null.
    public var stdinFD: Int32?
    /// Where the cgroup hierarchy is mounted (tests point it at a bare cgroup2 mount).
    var cgroupRoot = Cgroup.defaultRoot

    public init(profile: Profile, argv: [String], workspace: String? = nil) {
        self.profile = profile
        self.argv = argv
        self.workspace = workspace
    }
}

/// Why a jailed command ended.
public enum ExitReason: String, Sendable {
    case exited, signaled, timeout, oom
    case outputLimit = "output_limit"
    case setupFailed = "setup_failed"
}

/// The outcome of one jailed command (the `exec` result of DESIGN §6).
public struct ExecResult: Sendable {
    /// The status `sbx run` exits with: the command's code, 124 on timeout, 128+N when killed by signal N, 125 on setup failure.
    public var exitCode: Int32
    public var signal: Int32?
    public var reason: ExitReason
    public var stdout: [UInt8]
    public var stderr: [UInt8]
    public var stdoutTruncatedBytes: UInt64
    public var stderrTruncatedBytes: UInt64
    public var durationMs: Double
    public var peakMemoryBytes: UInt64?
    public var cpuMs: Double
    /// For `setup_failed`: the failing step and errno, as one line.
    public var setupError: String?
}

/// Launches and supervises one jailed command.
public enum Jail {
    /// Where sbx-init lives: next to the running executable.
    public static func initPath() -> String {
        (executableDirectory() ?? ".") + "/sbx-init"
    }

    /// Host ids the jail's root maps to: the workspace's owner when that is an
    /// ordinary user, the profile's unprivileged ids otherwise. Never 0.
    public static func hostIDs(profile: Profile, workspace: String?) throws(SandboxError) -> (uid: UInt32, gid: UInt32) {
        guard let workspace else { return (profile.hostUID, profile.hostGID) }
        var st = stat()
        guard stat(workspace, &st) == 0 else {
            throw .hostPath(path: workspace, reason: "workspace does not exist", errno: Errno(rawValue: errno))
        }
        guard st.st_mode & S_IFMT == S_IFDIR else {
            throw .hostPath(path: workspace, reason: "workspace is not a directory", errno: .notDirectory)
        }
        if st.st_uid != 0 {
            return (st.st_uid, st.st_gid != 0 ? st.st_gid : st.st_uid)
        }
        if profile.workspace == .readWrite && st.st_mode & 0o002 == 0 {
            throw .hostPath(
                path: workspace,
                reason: "workspace belongs to root and the jail never runs as host root: give it to an unprivileged user "
                    + "(chown -R \(profile.hostUID):\(profile.hostGID) \(workspace)) or use --profile readonly",
                errno: nil)
        }
        return (profile.hostUID, profile.hostGID)
    }

    /// Runs the command to completion. `stdoutSink`/`stderrSink` stream output through as it arrives.
    public static func run(_ request: JailRequest, stdoutSink: Int32? = nil, stderrSink: Int32? = nil) throws(SandboxError) -> ExecResult {
        let start = monotonicNanos()
        var trace = PhaseTrace(start: start)
        guard getuid() == 0 else {
            throw .invalidArgument(name: "sbx", reason: "must run as root (it creates cgroups and maps the jail to an unprivileged uid)")
        }
        guard !request.argv.isEmpty, !request.argv[0].isEmpty else { throw .invalidArgument(name: "command", reason: "missing command") }
        guard request.cwd.hasPrefix("/") else { throw .invalidArgument(name: "cwd", reason: "must be an absolute path inside the jail") }
        let profile = request.profile
        var workspace: String? = nil
        if let w = request.workspace {
            guard let real = RootFS.realPath(w) else { throw .hostPath(path: w, reason: "workspace does not exist", errno: Errno(rawValue: errno)) }
            workspace = real
        }
        let ids = try hostIDs(profile: profile, workspace: workspace)
        let initFD = cjail_open_path(initPath())
        guard initFD >= 0 else {
            throw .hostPath(path: initPath(), reason: "sbx-init is missing (it must sit next to the sbx binary)", errno: Errno(rawValue: errno))
        }
        defer { close(initFD) }
        guard let cgroupVersion = Cgroup.detectVersion(root: request.cgroupRoot) else {
            throw .cgroup(operation: "detect", path: request.cgroupRoot, errno: .noSuchFileOrDirectory)
        }
        trace.mark("checks")

        // Memory the launch children share with us: alive until the jail has been reaped
        // (the defers run after every return below, and the supervisor reaps).
        let memory = try LaunchMemory()
        defer { memory.free() }
        var cgroup: Cgroup? = nil
        defer { cgroup?.destroy() }
        // v2 jails are born in their cgroup (clone3), so it must exist first; v1 jails join it
        // once planned, so creating it overlaps with the kernel building the namespaces.
        if cgroupVersion == .v2 {
            cgroup = try Cgroup(version: cgroupVersion, memoryBytes: profile.limits.memoryBytes, pids: profile.limits.pids, root: request.cgroupRoot)
        }

        let cfg = memory.config
        var cloneFlags = CJAIL_CLONE_NEWUSER | CJAIL_CLONE_NEWNS | CJAIL_CLONE_NEWPID | CJAIL_CLONE_NEWIPC | CJAIL_CLONE_NEWUTS
        if cgroupVersion == .v2 { cloneFlags |= CJAIL_CLONE_NEWCGROUP }
        if profile.network == .none { cloneFlags |= CJAIL_CLONE_NEWNET }
        cfg.pointee.clone_flags = cloneFlags
        cfg.pointee.host_uid = ids.uid
        cfg.pointee.host_gid = ids.gid
        cfg.pointee.cgroup_dir_fd = cgroup?.directoryFD ?? -1
        memory.setRlimits([
            clampedLimit(RLIMIT_NOFILE, profile.limits.nofile),
            clampedLimit(RLIMIT_CORE, 0),
            profile.limits.fileSizeBytes.map { clampedLimit(RLIMIT_FSIZE, $0) },
            profile.limits.cpuSeconds.map { clampedLimit(RLIMIT_CPU, $0) },
        ].compactMap { $0 })
        trace.mark("prepare launch")
        guard cjail_spawn(cfg) == 0 else { return setupFailure(cfg, ops: [], start: start) }
        trace.mark("spawn")

        // Plan while the helper creates the namespaces; the jail waits for cjail_publish.
        let out: Pipe, err: Pipe, status: Pipe, ops: [MountOp]
        var devNull: Int32 = -1
        defer { if devNull >= 0 { close(devNull) } }
        do {
            if cgroup == nil {
                cgroup = try Cgroup(version: cgroupVersion, memoryBytes: profile.limits.memoryBytes, pids: profile.limits.pids, root: request.cgroupRoot)
            }
            trace.mark("cgroup")
            let filters = try Seccomp.filters(for: profile)
            trace.mark("seccomp")
            ops = try RootFS.plan(profile: profile, workspace: workspace)
            trace.mark("plan")
            out = try Pipe()
            err = try Pipe()
            status = try Pipe()
            _ = cjail_set_pipe_size(out.read, 1 << 20)
            _ = cjail_set_pipe_size(err.read, 1 << 20)
            var stdinFD = request.stdinFD ?? -1
            if stdinFD < 0 {
                devNull = open("/dev/null", O_RDONLY | O_CLOEXEC)
                stdinFD = devNull
            }
            var env = profile.env
            for (k, v) in request.env { env[k] = v }

            var plan = cjail_config()
            let joinFDs = cgroup!.joinFDs
            plan.cgroup_fd_count = Int32(joinFDs.count)
            withUnsafeMutableBytes(of: &plan.cgroup_fds) { raw in
                for (i, fd) in joinFDs.prefix(4).enumerated() { raw.bindMemory(to: Int32.self)[i] = fd }
            }
            plan.unshare_cgroup_ns = cgroupVersion == .v1 ? 1 : 0
            plan.stdio_fds = (stdinFD, out.write, err.write)
            plan.status_fd = status.write
            plan.init_fd = initFD
            plan.staging_dir = memory.string("/tmp")
            plan.root_tmpfs_options = memory.string("mode=0755,size=4m,nr_inodes=4096")
            plan.ops = memory.setOps(ops)
            plan.op_count = Int32(ops.count)
            plan.hostname = memory.string(profile.hostname)
            plan.bring_up_loopback = profile.network == .none ? 1 : 0
            plan.cwd = memory.string(request.cwd)
            plan.last_cap = Int32(lastCapability())
            plan.filters = memory.setFilters(filters)
            plan.filter_count = Int32(filters.count)
            plan.command_argv = memory.stringArray(request.argv)
            plan.envp = memory.stringArray(env.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" })
            plan.path_list = memory.string(env["PATH"] ?? "/usr/local/bin:/usr/bin:/bin")
            plan.shell_argv = UnsafeMutablePointer(mutating: memory.stringArray(["/bin/sh", "/"] + request.argv.dropFirst()))
            cjail_publish(cfg, &plan)
            trace.mark("publish")
        } catch {
            cjail_publish(cfg, nil)
            _ = cjail_reap_helper(cfg)
            reap(cfg.pointee.jail_pid)
            throw error
        }
        guard cjail_reap_helper(cfg) == 0 else {
            reap(cfg.pointee.jail_pid)
            return setupFailure(cfg, ops: ops, start: start)
        }
        // The jail shared our fd table until now; close our write ends only once it has its own.
        _ = cjail_wait_jail_files(cfg)
        out.closeWrite()
        err.closeWrite()
        status.closeWrite()

        var supervisor = Supervisor(
            jailPID: cfg.pointee.jail_pid, stdoutFD: out.read, stderrFD: err.read, statusFD: status.read,
            limits: profile.limits, stdoutSink: stdoutSink, stderrSink: stderrSink, cgroup: cgroup!, start: start)
        let outcome = try supervisor.run()
        trace.mark("supervise")
        withExtendedLifetime((out, err, status)) {}
        withUnsafeBytes(of: cfg.pointee.marks) { raw in
            let names = ["helper", "clone", "id maps", "jail", "pivot", "mounts", "lockdown", "exec"]
            for (i, t) in raw.bindMemory(to: UInt64.self).prefix(names.count).enumerated() where t > 0 {
                trace.mark("  " + names[i], at: t)
            }
        }
        cgroup?.destroy()
        trace.mark("cgroup destroy")
        trace.report()
        // pid 1 died before reporting a status: its setup failed, and it said where.
        if !outcome.commandReported && cfg.pointee.failed_step != 0 { return setupFailure(cfg, ops: ops, start: start) }
        return outcome.result
    }

    static func reap(_ pid: pid_t) {
        guard pid > 0 else { return }
        var s: Int32 = 0
        while waitpid(pid, &s, __WALL) < 0 && errno == EINTR {}
    }

    static func setupFailure(_ cfg: UnsafeMutablePointer<cjail_config>, ops: [MountOp], start: UInt64) -> ExecResult {
        let c = cfg.pointee
        let step = stepName(c.failed_step, op: c.failed_op, ops: ops)
        return ExecResult(
            exitCode: 125, signal: nil, reason: .setupFailed, stdout: [], stderr: [], stdoutTruncatedBytes: 0,
            stderrTruncatedBytes: 0, durationMs: Double(monotonicNanos() - start) / 1e6, peakMemoryBytes: nil, cpuMs: 0,
            setupError: SandboxError.setup(step: step, errno: Errno(rawValue: c.failed_errno)).description)
    }

    static func stepName(_ step: Int32, op: Int32, ops: [MountOp]) -> String {
        switch cjail_step(rawValue: UInt32(step)) {
        case CJAIL_STEP_CGROUP_JOIN: return "cgroup join"
        case CJAIL_STEP_CLONE: return "clone"
        case CJAIL_STEP_ID_MAP: return "uid/gid map"
        case CJAIL_STEP_SET_IDS: return "set ids"
        case CJAIL_STEP_MOUNT_PRIVATE: return "make mounts private"
        case CJAIL_STEP_ROOT_TMPFS: return "root tmpfs"
        case CJAIL_STEP_PIVOT_ROOT: return "pivot_root"
        case CJAIL_STEP_MOUNT_OP: return op >= 0 && Int(op) < ops.count ? "mount (\(ops[Int(op)].summary))" : "mount"
        case CJAIL_STEP_DETACH_OLDROOT: return "detach old root"
        case CJAIL_STEP_ROOT_READONLY: return "read-only root"
        case CJAIL_STEP_HOSTNAME: return "hostname"
        case CJAIL_STEP_LOOPBACK: return "loopback up"
        case CJAIL_STEP_CHDIR: return "chdir"
        case CJAIL_STEP_SETSID: return "setsid"
        case CJAIL_STEP_RLIMIT: return "rlimits"
        case CJAIL_STEP_CAPS: return "drop capabilities"
        case CJAIL_STEP_NO_NEW_PRIVS: return "no_new_privs"
        case CJAIL_STEP_FDS: return "file descriptors"
        case CJAIL_STEP_SECCOMP: return "seccomp"
        case CJAIL_STEP_EXEC: return "exec sbx-init"
        case CJAIL_STEP_PDEATHSIG: return "parent-death signal"
        default: return "step \(step)"
        }
    }

    /// A limit no higher than our own hard limit: raising one needs CAP_SYS_RESOURCE,
    /// which some hosts withhold even from root.
    static func clampedLimit(_ resource: __rlimit_resource, _ value: UInt64) -> cjail_rlimit {
        var current = rlimit()
        getrlimit(__rlimit_resource_t(resource.rawValue), &current)
        let v = min(value, UInt64(current.rlim_max))
        return cjail_rlimit(resource: Int32(resource.rawValue), soft: v, hard: v)
    }

    /// The highest capability number the kernel knows (libcap asks the kernel).
    static func lastCapability() -> Int {
        let n = Int(cap_max_bits()) - 1
        return n > 0 ? n : 63
    }
}

// MARK: - small owned resources

/// A pipe whose ends close themselves.
final class Pipe {
    private(set) var read: Int32
    private(set) var write: Int32
    init() throws(SandboxError) {
        var fds: [Int32] = [-1, -1]
        guard cjail_pipe_cloexec(&fds) == 0 else { throw .system(call: "pipe2", errno: Errno(rawValue: errno)) }
        read = fds[0]
        write = fds[1]
    }
    func closeWrite() { if write >= 0 { close(write); write = -1 } }
    func closeRead() { if read >= 0 { close(read); read = -1 } }
    deinit { closeWrite(); closeRead() }
}

/// Everything the launch children read from our memory: the config, the stacks they run on,
/// the mount ops, filters, rlimits and strings. Freed explicitly (never by ARC, which could
/// release it after its last Swift use while the children still read it) once the jail is reaped.
final class LaunchMemory {
    let config: UnsafeMutablePointer<cjail_config>
    let stackSize = 128 << 10
    private let stacks: UnsafeMutableRawPointer
    private var blocks: [UnsafeMutableRawPointer] = []

    init() throws(SandboxError) {
        let s = mmap(nil, 3 * stackSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0)
        guard let s, s != MAP_FAILED else { throw .system(call: "mmap", errno: Errno(rawValue: errno)) }
        stacks = s
        config = .allocate(capacity: 1)
        config.initialize(to: cjail_config())
        config.pointee.stack_memory = stacks
        config.pointee.stack_size = stackSize
        config.pointee.cgroup_dir_fd = -1
    }

    func free() {
        for b in blocks { Glibc.free(b) }
        blocks = []
        config.deallocate()
        munmap(stacks, 3 * stackSize)
    }

    private func allocate(_ bytes: Int) -> UnsafeMutableRawPointer {
        let p = malloc(max(bytes, 1))!
        blocks.append(p)
        return p
    }

    func string(_ s: String) -> UnsafePointer<CChar> {
        let p = strdup(s)!
        blocks.append(UnsafeMutableRawPointer(p))
        return UnsafePointer(p)
    }

    func stringArray(_ items: [String]) -> UnsafePointer<UnsafeMutablePointer<CChar>?> {
        let arr = allocate((items.count + 1) * MemoryLayout<UnsafeMutablePointer<CChar>?>.stride)
            .bindMemory(to: UnsafeMutablePointer<CChar>?.self, capacity: items.count + 1)
        for (i, s) in items.enumerated() { arr[i] = UnsafeMutablePointer(mutating: string(s)) }
        arr[items.count] = nil
        return UnsafePointer(arr)
    }

    func copy<T>(_ items: [T]) -> UnsafePointer<T> {
        let p = allocate(items.count * MemoryLayout<T>.stride).bindMemory(to: T.self, capacity: max(items.count, 1))
        for (i, item) in items.enumerated() { (p + i).initialize(to: item) }
        return UnsafePointer(p)
    }

    func setRlimits(_ limits: [cjail_rlimit]) {
        config.pointee.rlimits = copy(limits)
        config.pointee.rlimit_count = Int32(limits.count)
    }

    func setFilters(_ programs: [SeccompProgram]) -> UnsafePointer<cjail_filter> {
        copy(programs.map { p in
            let insns = allocate(p.bytes.count)
            p.bytes.withUnsafeBytes { insns.copyMemory(from: $0.baseAddress!, byteCount: p.bytes.count) }
            return cjail_filter(insns: UnsafeRawPointer(insns), count: UInt16(p.instructionCount))
        })
    }

    func setOps(_ ops: [MountOp]) -> UnsafePointer<cjail_op> {
        copy(ops.map { op -> cjail_op in
            var c = cjail_op()
            switch op {
            case let .mkdir(p, mode):
                c.kind = Int32(CJAIL_OP_MKDIR.rawValue); c.target = string(p); c.mode = mode
            case let .symlink(p, to):
                c.kind = Int32(CJAIL_OP_SYMLINK.rawValue); c.target = string(p); c.data = string(to)
            case let .writeFile(p, contents, mode):
                let data = allocate(contents.count)
                contents.withUnsafeBytes { if $0.count > 0 { data.copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
                c.kind = Int32(CJAIL_OP_WRITE_FILE.rawValue); c.target = string(p)
                c.data = UnsafePointer(data.assumingMemoryBound(to: CChar.self)); c.data_len = contents.count; c.mode = mode
            case let .tmpfs(p, options, flags):
                c.kind = Int32(CJAIL_OP_TMPFS.rawValue); c.target = string(p); c.data = string(options); c.flags = flags
            case let .bind(source, target, isFile, attributes):
                c.kind = Int32(CJAIL_OP_BIND.rawValue); c.source = string("/oldroot" + source); c.target = string(target)
                c.is_file = isFile ? 1 : 0; c.attr = attributes
            case let .setAttributes(p, attributes, recursive):
                c.kind = Int32(CJAIL_OP_SET_ATTR.rawValue); c.target = string(p); c.attr = attributes; c.flags = recursive ? 1 : 0
            case let .proc(p):
                c.kind = Int32(CJAIL_OP_PROC.rawValue); c.target = string(p)
            case let .devpts(p):
                c.kind = Int32(CJAIL_OP_DEVPTS.rawValue); c.target = string(p)
            }
            return c
        })
    }
}

/// Phase timings of one launch, printed to stderr when SBX_TRACE is set (for profiling start-up).
struct PhaseTrace {
    let start: UInt64
    let enabled = getenv("SBX_TRACE") != nil
    var marks: [(String, UInt64)] = []
    init(start: UInt64) { self.start = start }
    mutating func mark(_ name: String, at t: UInt64 = monotonicNanos()) { if enabled { marks.append((name, t)) } }
    func report() {
        guard enabled else { return }
        var last = start, line = "sbx: trace"
        for (name, t) in marks.sorted(by: { $0.1 < $1.1 }) {
            line += " \(name)=\(Double(t - last) / 1000)us"
            last = t
        }
        line += "\n"
        _ = line.withCString { write(2, $0, strlen($0)) }
    }
}

func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
