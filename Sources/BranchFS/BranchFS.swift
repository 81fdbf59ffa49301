import CBranchFS
import Dispatch

#if canImport(Glibc)
import Glibc
#endif

/// One path a branch changed relative to its parent, as `branch.diff` reports it.
public struct BranchChange: Equatable, Sendable {
    public enum Kind: String, Sendable { case added, modified, deleted }
    public let path: String
    public let kind: Kind
}

/// What `commit` did: the parent's new epoch and the siblings it invalidated.
public struct CommitResult: Equatable, Sendable {
    public let committed: String
    public let into: String
    public let epoch: UInt64
    public let invalidated: [String]
    /// How many paths the commit carried into the parent.
    public let changes: Int
}

/// The BranchFS service: the branch registry, every branch's overlay-format delta under the
/// state directory, the commit journal and the FUSE session that serves each branch at
/// `<mountPoint>/<branch-id>/`. Thread-safe: every public method may be called from any thread.
///
/// Opening it recovers what a killed predecessor left: it finishes an interrupted commit whose
/// journal was written (roll-forward) and drops the staging of one that was not (roll-back),
/// and lazily unmounts a stale FUSE mount at `mountPoint`.
///
/// State layout: `branches.json` + `branches.log` (registry), `layers/<id>/` (a branch's upper, overlayfs format),
/// `work/<id>/` (copy-ups in progress), `journal/commit` (see `Journal`), `staging/<commit>/`,
/// `spares/` (the next forks' directories, see `SpareDirectories`), `trash/`.
public final class BranchFS: @unchecked Sendable, ViewProvider {
    public let workspace: String
    public let stateDirectory: String
    public let mountPoint: String
    let store: BranchStore
    let journal: Journal
    /// Commits into main stage inside the workspace (hidden) when the state directory lives
    /// on another filesystem: a hard link cannot cross over.
    private let stagesInWorkspace: Bool
    /// When it stages in the workspace, the root's ctime after its last own move of it.
    private var ownRootChange: OwnRootChange
    let lock = Mutex()
    let server: FuseServer
    private var views: [String: View] = [:]
    private var closed = false
    private let janitor = DispatchQueue(label: "sbx.branchfs.janitor")
    /// Each fork's two empty directories, made ahead in block groups of their own.
    private let spares: SpareDirectories
    /// Runs the last, background part of each commit, in commit order.
    private let settler = DispatchQueue(label: "sbx.branchfs.settler")
    private let failureLock = Mutex()
    /// Set once a commit failed past its commit point (see `failStop`).
    private var stopReason: String?
    /// Tests widen the window between a commit's return and its settling with this.
    var settleDelayForTesting: useconds_t = 0

    /// Opens the state in `stateDirectory` (created if missing) for `workspace`, recovers, and
    /// mounts the FUSE session at `mountPoint` (default `<stateDirectory>/mnt`).
    public init(workspace: String, stateDirectory: String, mountPoint: String? = nil) throws(BranchError) {
        self.workspace = try Self.absoluteDirectory(workspace, what: "workspace")
        // Traversable (not listable) by others: a jail that runs as an unprivileged host user
        // reaches its branch through <state>/mnt; the deltas below stay 0700.
        try Self.makeDirectory(stateDirectory, mode: 0o711)
        self.stateDirectory = try Self.absoluteDirectory(stateDirectory, what: "state directory")
        var st = stat()
        if lstat(self.stateDirectory, &st) == 0, st.st_uid == getuid(), st.st_mode & 0o011 != 0o011 {
            _ = chmod(self.stateDirectory, (st.st_mode & 0o7777) | 0o011)
        }
        if self.workspace == self.stateDirectory || self.stateDirectory.hasPrefix(self.workspace + "/") {
            throw .invalidRequest("the state directory \(self.stateDirectory) must not be inside the workspace \(self.workspace)")
        }
        let mnt = mountPoint ?? self.stateDirectory + "/mnt"
        for d in ["layers", "work", "journal", "staging", "trash"] { try Self.makeDirectory(self.stateDirectory + "/" + d) }
        Self.detachStaleMount(mnt)
        try Self.makeDirectory(mnt, mode: 0o755)
        self.mountPoint = try Self.absoluteDirectory(mnt, what: "mount point")
        if self.workspace.hasPrefix(self.mountPoint + "/") || self.mountPoint.hasPrefix(self.workspace + "/") || self.workspace == self.mountPoint {
            throw .invalidRequest("the workspace \(self.workspace) and the mount point \(self.mountPoint) must not contain each other")
        }
        store = try BranchStore(stateDirectory: self.stateDirectory)
        spares = try SpareDirectories(directory: self.stateDirectory + "/spares")
        do { journal = try Journal(directory: self.stateDirectory + "/journal") } catch { throw .io(error.what, errno: error.errno) }
        stagesInWorkspace = !Committer.sameDevice(self.stateDirectory, self.workspace)
        ownRootChange = OwnRootChange(stateDirectory: self.stateDirectory)
        server = FuseServer(mountPoint: self.mountPoint)
        server.provider = self
        try recover()
        Durability.startPool() // its threads exist before the first commit needs them
        do { try server.start() } catch { throw .io("FUSE mount at \(self.mountPoint): \(error.what)", errno: error.errno) }
    }

    deinit { close() }

    /// Unmounts the FUSE session and stops its threads. Idempotent.
    public func close() {
        let first = lock.locked { () -> Bool in
            defer { closed = true }
            return !closed
        }
        if first {
            settler.sync {}
            server.stop()
            spares.stop()
            janitor.sync {}
        }
    }

    /// The host directory where any tool reads and writes branch `id`.
    public func path(of id: String) -> String { mountPoint + "/" + id }

    public func list() -> [Branch] { lock.locked { store.list() } }

    public func info(_ id: String) throws(BranchError) -> Branch {
        try lock.lockedThrowing { () throws(BranchError) in try store.info(id) }
    }

    public func liveChildren(of id: String) -> [Branch] { lock.locked { store.liveChildren(of: id) } }

    /// Forks `count` siblings of `parent`; O(1) each, whatever the size of the tree: a record
    /// and two empty directories (the delta and its work directory) taken from the spares. The
    /// parent becomes frozen.
    public func create(from parent: String = BranchStore.mainID, count: Int = 1) throws(BranchError) -> [Branch] {
        defer { server.invalidateInode(FuseServer.rootIno) } // the mount root's cached listing
        return try lock.lockedThrowing { () throws(BranchError) in
            // A commit that staged inside the workspace removes its staging directory while it
            // settles, which moves the workspace root's ctime: after this fork, that would look
            // like an external change (see `ExternalChanges`).
            if parent == BranchStore.mainID && stagesInWorkspace { settler.sync {} }
            let made = try store.create(from: parent, count: count)
            // The upper's root carries the parent root's owner, mode and times: it is what the
            // branch root shows.
            let pv = try viewLocked(parent)
            let rootStat = try? server.tree.reading { () throws(FSError) in try pv.namespace.lockedThrowing { () throws(FSError) in try pv.stat(pv.root) } }
            for b in made {
                try spares.take(layer: layerPath(b.id), work: workPath(b.id))
                if let rootStat { Overlay.applyMetadata(AT_FDCWD, layerPath(b.id), rootStat) }
            }
            // Freeze the parent before anyone can see the children: its writes now fail with EROFS.
            pv.writeGate.writing { pv.frozen = true }
            return made
        }
    }

    /// Paths `id` added, modified or deleted relative to its parent, sorted.
    public func diff(_ id: String) throws(BranchError) -> [BranchChange] {
        try lock.lockedThrowing { () throws(BranchError) in
            guard id != BranchStore.mainID else { throw .invalidRequest("main is the workspace: it has no parent to differ from") }
            let b = try store.info(id)
            let view = try viewLocked(id, allowDead: true)
            let parent = try viewLocked(b.parent!, allowDead: true)
            do throws(FSError) {
                return try server.tree.reading { () throws(FSError) in
                    try view.namespace.lockedThrowing { () throws(FSError) in
                        try parent.namespace.lockedThrowing { () throws(FSError) in try Differ.diff(child: view, parent: parent) }
                    }
                }
            } catch { throw .io("diff \(id): \(error.what)", errno: error.errno) }
        }
    }

    /// The paths a commit of `id` would now be refused for: changed in the workspace outside
    /// BranchFS since the fork (see `ExternalChanges`). Empty unless `id` is an active branch
    /// of `main` with a known fork time; cost follows the branch's change, like its commit.
    public func externalChanges(_ id: String) throws(BranchError) -> [String] {
        try lock.lockedThrowing { () throws(BranchError) in
            let b = try store.info(id)
            guard b.parent == BranchStore.mainID, b.state == .active, let forkTime = b.forkTime else { return [] }
            let view = try viewLocked(id)
            let parent = try viewLocked(BranchStore.mainID)
            do throws(FSError) {
                // The names held still, as for a diff; the plan's staging names are never used.
                let plan = try server.tree.reading { () throws(FSError) in
                    try view.namespace.lockedThrowing { () throws(FSError) in
                        try Committer.plan(id: "", child: view, parent: parent, staging: nil)
                    }
                }
                return ExternalChanges.find(plan.ops, root: parent.upper.fd, since: forkTime, ownRootCtime: ownRootChange.ctime)
            } catch { throw .io("external changes of \(id): \(error.what)", errno: error.errno) }
        }
    }

    /// Commits `id` into its parent, atomically; first commit wins. The delta is planned and
    /// staged while the branch's writers wait, journaled (the commit point), recorded in the
    /// registry, then applied under the tree lock so no reader sees half of it.
    public func commit(_ id: String) throws(BranchError) -> CommitResult {
        var trace = Trace("commit \(id)")
        defer { trace.report() }
        let (result, dead, parentView, changed) = try lock.lockedThrowing { () throws(BranchError) -> (CommitResult, [View], View, [String]) in
            guard id != BranchStore.mainID else { throw .invalidRequest("main is the workspace: it has nothing to commit into") }
            trace.mark("lock")
            try settled()
            trace.mark("settled")
            try store.checkCommit(id)
            let b = try store.info(id)
            let parentID = b.parent!
            let child = try viewLocked(id)
            let parent = try viewLocked(parentID)
            return try child.writeGate.writing { () throws(BranchError) in
                let commitID = "c" + store.newID().dropFirst()
                let intoWorkspace = parentID == BranchStore.mainID
                var staging: String?
                if intoWorkspace {
                    staging = stagesInWorkspace
                        ? workspace + "/" + parent.hiddenRootPrefix + commitID
                        : stateDirectory + "/staging/" + commitID
                }
                var plan: CommitPlan
                do throws(FSError) {
                    plan = try server.tree.reading { () throws(FSError) in
                        try Committer.plan(id: commitID, child: child, parent: parent, staging: staging)
                    }
                } catch { throw .io("commit \(id): \(error.what)", errno: error.errno) }
                trace.mark("plan")
                // Before anything is written (the staging directory may live in the workspace):
                // refused, the branch stays as it was. Commits into a branch leave the workspace
                // alone, and every earlier commit into main precedes this branch's fork (first
                // commit wins), so whatever changed since came from outside.
                if intoWorkspace, let forkTime = b.forkTime {
                    let changed = ExternalChanges.find(plan.ops, root: parent.upper.fd, since: forkTime, ownRootCtime: ownRootChange.ctime)
                    guard changed.isEmpty else { throw .externalChange(id, paths: changed) }
                    trace.mark("external changes")
                }
                var stagingFD: Int32 = -1
                if let staging {
                    guard mkdir(staging, 0o700) == 0 else { throw .io("mkdir \(staging)", errno: errno) }
                    stagingFD = open(staging, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                }
                defer { if stagingFD >= 0 { Glibc.close(stagingFD) } }
                // Open on the files the journal carries, until the settler has fsynced them.
                var inlineFDs: [Int32] = []
                var settling = false
                defer { if !settling { inlineFDs.forEach { Glibc.close($0) } } }
                var journaling = false
                do throws(FSError) {
                    if let staging {
                        inlineFDs = try server.tree.reading { () throws(FSError) in try Committer.stage(&plan, from: child, stagingFD: stagingFD) }
                        trace.mark("stage (\(plan.inline.count) inline)")
                        // Staged data first, then the journal: the journal on disk is the commit
                        // point. Files it carries itself need no fsync of their own yet.
                        let durable = plan.stagedNames.filter { plan.inline[$0] == nil }
                        if !durable.isEmpty {
                            try Durability.fsyncAll(durable.map { staging + "/" + $0 } + [staging])
                            trace.mark("fsync staged (\(durable.count + 1))")
                        }
                    }
                    journaling = true
                    try journal.write(plan)
                    trace.mark("journal")
                } catch {
                    // A failed write may still have left the whole record on disk: it must not
                    // be replayed once its staging is gone.
                    if journaling {
                        do throws(FSError) { try journal.clear() } catch { failStop("commit \(id): clearing its failed journal", error, parent: parent) }
                    }
                    if let staging {
                        try? Overlay.removeTree(AT_FDCWD, staging)
                        if stagesInWorkspace { ownRootChange.record(workspace: workspace) }
                    }
                    throw .io("commit \(id): \(error.what)", errno: error.errno)
                }
                // The journal is on disk: from here on recovery rolls this commit forward.
                // Appended without fsync: if it is lost, recovery redoes it from the journal; it
                // is fsynced with the applied directories, before the journal goes.
                let (epoch, invalidated) = try store.commit(id, durable: false)
                trace.mark("registry")
                let dead = [child] + invalidated.compactMap { views[$0] }
                let touched: [String]
                do throws(FSError) {
                    touched = try server.tree.writing { () throws(FSError) -> [String] in
                        trace.mark("tree lock")
                        for v in dead { v.deadErrno = ESTALE }
                        let touched = try Committer.apply(plan, trash: stateDirectory + "/trash/" + plan.id)
                        trace.mark("apply")
                        parent.settling.begin()
                        parent.generation += 1
                        parent.frozen = !store.liveChildren(of: parentID).isEmpty
                        return touched
                    }
                } catch {
                    // The registry says committed; a restart replays the journal, which no
                    // later commit may overwrite: this instance changes nothing more.
                    failStop("commit \(id) applying", error, parent: parent)
                    throw .io("commit \(id) applying \(error.what) (the journal will be replayed on restart)", errno: error.errno)
                }
                retireChild(plan)
                // Durable since the journal: what is left (fsyncs of the changed directories, of
                // the files the journal carried and of the registry log, then clearing the
                // journal) runs in the background while the parent's writers and the next
                // commit wait for it.
                settling = true
                settle(plan, touched: touched, installed: inlineFDs, parent: parent)
                trace.mark("retire")
                for v in dead { views[v.id] = nil }
                let result = CommitResult(committed: id, into: parentID, epoch: epoch, invalidated: invalidated, changes: plan.ops.count)
                return (result, dead, parent, plan.ops.map(\.path))
            }
        }
        // Outside every lock: the kernel may need inode locks that a waiting handler holds.
        server.invalidate(paths: changed, in: parentView)
        trace.mark("invalidate parent paths")
        for v in dead {
            server.invalidateAll(of: v)
            trace.mark("invalidate dead view")
            server.dropRoot(of: v)
            trace.mark("drop dead nodes")
        }
        server.invalidateInode(FuseServer.rootIno)
        trace.mark("invalidate root")
        return result
    }

    /// Throws `id` and its descendants away, deltas included.
    public func abort(_ id: String) throws(BranchError) {
        let dead = try lock.lockedThrowing { () throws(BranchError) -> [View] in
            try settled() // a commit settling into one of these deltas still fsyncs its directories
            var dead: [View] = []
            for d in try store.abort(id) {
                if let v = views.removeValue(forKey: d) { v.writeGate.writing { v.deadErrno = ESTALE }; dead.append(v) }
                discard(layerPath(d))
                discard(workPath(d))
            }
            if let parent = store.branches[id]?.parent, let pv = views[parent] {
                pv.writeGate.writing { pv.frozen = store.isFrozen(parent) }
            }
            return dead
        }
        for v in dead {
            server.invalidateAll(of: v)
            server.dropRoot(of: v)
        }
        server.invalidateInode(FuseServer.rootIno)
    }

    // MARK: - views

    func layerPath(_ id: String) -> String { stateDirectory + "/layers/" + id }
    func workPath(_ id: String) -> String { stateDirectory + "/work/" + id }

    /// The view of branch `id`, built on first use: its upper, each ancestor's upper, the workspace.
    func viewLocked(_ id: String, allowDead: Bool = false) throws(BranchError) -> View {
        if let v = views[id] { return v }
        let b = try store.info(id)
        guard b.state == .active || allowDead else { throw .notActive(id, b.state) }
        var paths: [String] = []
        var cursor: Branch? = b
        while let c = cursor, c.id != BranchStore.mainID {
            paths.append(layerPath(c.id))
            cursor = c.parent.flatMap { store.branches[$0] }
        }
        paths.append(workspace)
        do throws(FSError) {
            let layers = try paths.map { (p) throws(FSError) in try Layer(path: p) }
            let work = id == BranchStore.mainID ? nil : try Layer(path: workPath(id))
            let v = View(id: id, layers: layers, work: work)
            v.root = server.makeRoot(for: v)
            v.frozen = store.isFrozen(id)
            if b.state != .active { v.deadErrno = ESTALE }
            if b.state == .active { views[id] = v }
            return v
        } catch { throw .io("open layers of \(id): \(error.what)", errno: error.errno) }
    }

    func view(named id: String) -> View? {
        lock.locked { try? viewLocked(id) }
    }

    func liveBranchIDs() -> [String] {
        lock.locked { store.list().filter { $0.state == .active }.map(\.id) }
    }

    // MARK: - recovery

    /// Retires the child of an applied commit: its delta goes, and the names its installed
    /// files still had in it, so the workspace's files report their true link count at once.
    private func retireChild(_ plan: CommitPlan) {
        for op in plan.ops { if case let .install(rel, _) = op { unlinkat(AT_FDCWD, plan.childUpper + "/" + rel, 0) } }
        discard(layerPath(plan.child))
        discard(workPath(plan.child))
    }

    /// Retires the journal of an applied commit, durably gone before anyone can write the
    /// parent again (a replay over newer writes would undo them); then its staging and the
    /// files it replaced.
    private func retireJournal(_ plan: CommitPlan) throws(FSError) {
        try journal.clear()
        if let s = plan.staging { discard(s) }
        let replaced = stateDirectory + "/trash/" + plan.id
        janitor.async { try? Overlay.removeTree(AT_FDCWD, replaced) }
    }

    /// Finishes an applied commit in the background: fsyncs the directories it changed, the
    /// files its journal carried (`installed`, descriptors it closes) and the registry log, then
    /// retires its journal. A failure leaves the journal for the next start to replay and stops
    /// this instance from changing anything else.
    private func settle(_ plan: CommitPlan, touched: [String], installed: [Int32], parent: View) {
        let log = store.logFile.map { [$0] } ?? []
        settler.async { [self] in
            defer { installed.forEach { Glibc.close($0) } }
            if settleDelayForTesting > 0 { usleep(settleDelayForTesting) }
            var trace = Trace("settle \(plan.id)")
            do throws(FSError) {
                try Durability.fsyncAll(touched + log, fds: installed)
                trace.mark("fsync applied (\(touched.count + installed.count + log.count))")
                try retireJournal(plan)
                trace.mark("journal retired")
            } catch {
                failStop("commit \(plan.id) settling", error, parent: parent)
            }
            trace.report()
            parent.settling.end()
        }
    }

    /// After a failure that leaves the journal's record for the next start to replay: the
    /// parent turns EIO and every later commit fails (see `settled`), so nothing overwrites
    /// the record or lands on top of what it still has to redo.
    private func failStop(_ context: String, _ error: FSError, parent: View) {
        let what = "\(context): \(error.what): \(String(cString: strerror(error.errno)))"
        failureLock.locked { if stopReason == nil { stopReason = what } }
        parent.deadErrno = EIO
    }

    /// Waits for the background work (settling commits, then deletions) to drain.
    func quiesce() {
        settler.sync {}
        janitor.sync {}
    }

    /// Waits for every commit still settling; throws once one of them failed to.
    func settled() throws(BranchError) {
        settler.sync {}
        if let failure = failureLock.locked({ stopReason }) {
            throw .io("\(failure); restart sandboxd to replay its journal", errno: EIO)
        }
    }

    /// Removes a tree off the caller's path: renamed into `trash/` at once (O(1)), deleted by a
    /// background queue; whatever a crash leaves in `trash/` goes at the next start.
    func discard(_ path: String) {
        // A random name, not the registry's: the settler discards without the registry lock.
        let target = stateDirectory + "/trash/t" + String(UInt64.random(in: 0...UInt64.max), radix: 16)
        guard rename(path, target) == 0 else {
            try? Overlay.removeTree(AT_FDCWD, path) // another filesystem (staging in the workspace)
            return
        }
        janitor.async { try? Overlay.removeTree(AT_FDCWD, target) }
    }

    /// Replays journaled commits (roll-forward) and removes what unjournaled ones staged.
    private func recover() throws(BranchError) {
        let journalDir = stateDirectory + "/journal"
        for name in (try? Overlay.listNames(AT_FDCWD, journalDir)) ?? [] where name != Journal.name {
            try? Overlay.removeTree(AT_FDCWD, journalDir + "/" + name) // not ours: an older layout's
        }
        if let plan = journal.read() {
            if let b = store.branches[plan.child], b.state == .active { _ = try store.commit(plan.child) }
            do throws(FSError) {
                try Committer.restage(plan)
                try Durability.fsyncAll(try Committer.apply(plan))
                retireChild(plan)
                try retireJournal(plan)
            } catch { throw .io("replaying commit \(plan.id) of \(plan.child): \(error.what)", errno: error.errno) }
        }
        for name in (try? Overlay.listNames(AT_FDCWD, stateDirectory + "/trash")) ?? [] {
            try? Overlay.removeTree(AT_FDCWD, stateDirectory + "/trash/" + name)
        }
        for name in (try? Overlay.listNames(AT_FDCWD, stateDirectory + "/staging")) ?? [] {
            try? Overlay.removeTree(AT_FDCWD, stateDirectory + "/staging/" + name)
        }
        var removedFromWorkspace = false
        for name in (try? Overlay.listNames(AT_FDCWD, workspace)) ?? [] where name.hasPrefix(".sbx-staging-") {
            try? Overlay.removeTree(AT_FDCWD, workspace + "/" + name)
            removedFromWorkspace = true
        }
        if removedFromWorkspace { ownRootChange.record(workspace: workspace) }
        // Half-made copy-ups, and the deltas of branches that are gone.
        for b in store.list() where b.id != BranchStore.mainID {
            switch b.state {
            case .active:
                for name in (try? Overlay.listNames(AT_FDCWD, workPath(b.id))) ?? [] { try? Overlay.removeTree(AT_FDCWD, workPath(b.id) + "/" + name) }
                _ = mkdir(layerPath(b.id), 0o755)
                _ = mkdir(workPath(b.id), 0o755)
            case .committed, .aborted:
                try? Overlay.removeTree(AT_FDCWD, layerPath(b.id))
                try? Overlay.removeTree(AT_FDCWD, workPath(b.id))
            case .invalidated:
                try? Overlay.removeTree(AT_FDCWD, workPath(b.id))
            }
        }
    }

    /// A FUSE mount left by a killed daemon answers ENOTCONN: detach it so we can mount again.
    static func detachStaleMount(_ path: String) {
        guard isMountPoint(path) else { return }
        _ = umount2(path, Int32(MNT_DETACH))
    }

    /// Whether `path` is a mount point according to /proc/self/mountinfo (field 5, octal-escaped).
    static func isMountPoint(_ path: String) -> Bool {
        guard let bytes = Overlay.readFile("/proc/self/mountinfo") else { return false }
        let escaped = path.replacingSpaces()
        return String(decoding: bytes, as: UTF8.self).split(separator: "\n").contains { line in
            line.split(separator: " ").dropFirst(4).first.map { String($0) == escaped } ?? false
        }
    }

    static func makeDirectory(_ path: String, mode: mode_t = 0o700) throws(BranchError) {
        if mkdir(path, mode) != 0 && errno != EEXIST { throw .io("mkdir \(path)", errno: errno) }
    }

    static func absoluteDirectory(_ path: String, what: String) throws(BranchError) -> String {
        guard let resolved = realpath(path, nil) else { throw .invalidRequest("\(what) \(path): \(String(cString: strerror(errno)))") }
        defer { free(resolved) }
        var st = stat()
        guard stat(resolved, &st) == 0, st.st_mode & S_IFMT == S_IFDIR else { throw .invalidRequest("\(what) \(path) is not a directory") }
        return String(cString: resolved)
    }
}

extension String {
    /// mountinfo escapes spaces, tabs, newlines and backslashes as octal.
    func replacingSpaces() -> String {
        var out = ""
        for ch in self {
            switch ch {
            case " ": out += "\\040"
            case "\t": out += "\\011"
            case "\n": out += "\\012"
            case "\\": out += "\\134"
            default: out.append(ch)
            }
        }
        return out
    }
}
