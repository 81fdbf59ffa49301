import CBranchFS
import CFuse3
import Dispatch

#if canImport(Glibc)
import Glibc
#endif

/// Where the FUSE server finds the views it serves; BranchFS implements it.
protocol ViewProvider: AnyObject, Sendable {
    /// The view of branch `id` when its path is live (main and active branches).
    func view(named id: String) -> View?
    /// Names listed at the mount root.
    func liveBranchIDs() -> [String]
}

/// The libfuse low-level adapter: one session serves every branch at `<mount>/<id>/`.
/// Each handler is short: find the node, check the branch may do it, call the view, reply.
/// Caches: the kernel may keep entries, attributes and pages for an hour, because every change
/// to a view either goes through these handlers (the kernel sees it) or comes from a commit,
/// which invalidates exactly the paths it changed.
final class FuseServer: @unchecked Sendable {
    static let rootIno: UInt64 = 1
    /// Entry/attribute cache lifetime for branches (changes are invalidated precisely).
    static let branchTimeout = 3600.0
    /// The workspace can be changed behind our back: keep its cache short.
    static let mainTimeout = 1.0

    weak var provider: (any ViewProvider)?
    let mountPoint: String
    /// Shared by every handler, exclusive while a commit rewrites layers.
    let tree = RWLock()
    private let nodesLock = Mutex()
    /// Sends the invalidations handlers decide on, after their replies.
    private let invalidator = DispatchQueue(label: "sbx.branchfs.invalidate")
    private var nodes: [UInt64: Node] = [:]
    private struct ChildKey: Hashable { let parent: UInt64; let name: String }
    private var children: [ChildKey: Node] = [:]
    private struct HardKey: Hashable { let view: ObjectIdentifier; let ino: UInt64 }
    /// Upper files with several names, by inode: the node that serves all of them.
    private var hardlinks: [HardKey: Node] = [:]
    private var nextIno: UInt64 = 2
    private let mountRoot: Node
    private var session: OpaquePointer?
    private var loopThread: pthread_t?
    let uid = getuid()
    /// The mount point's attributes, taken before mounting over it.
    private var rootStat = stat()

    init(mountPoint: String) {
        self.mountPoint = mountPoint
        mountRoot = Node(ino: Self.rootIno, view: nil, parent: nil, name: "", isDirectory: true)
        nodes[Self.rootIno] = mountRoot
    }

    // MARK: - nodes

    /// Registers the root node of a new view (kept for the life of the view).
    func makeRoot(for view: View) -> Node {
        nodesLock.locked {
            let n = Node(ino: nextIno, view: view, parent: mountRoot, name: view.id, isDirectory: true)
            nextIno += 1
            nodes[n.ino] = n
            return n
        }
    }

    /// Forgets the nodes of a dead view that the kernel no longer references; the others answer
    /// ESTALE until the kernel forgets them.
    func dropRoot(of view: View) {
        nodesLock.locked {
            nodes = nodes.filter { $0.value.view !== view || $0.value.lookups > 0 }
            children = children.filter { $0.value.view !== view || $0.value.lookups > 0 }
        }
    }

    private func node(_ ino: UInt64) -> Node? { nodesLock.locked { nodes[ino] } }

    /// The node for `name` in `parent`, created on first sight; counts one kernel lookup.
    private func child(_ parent: Node, _ name: String, isDirectory: Bool, counted: Bool = true) -> Node {
        nodesLock.locked {
            let key = ChildKey(parent: parent.ino, name: name)
            let n: Node
            if let existing = children[key] { n = existing } else {
                n = Node(ino: nextIno, view: parent.view, parent: parent, name: name, isDirectory: isDirectory)
                nextIno += 1
                nodes[n.ino] = n
                children[key] = n
            }
            if counted { n.lookups += 1 }
            return n
        }
    }

    /// A file the kernel still knows about is losing its last name here: keep it open, so an
    /// open-unlinked file stays readable and writable as POSIX promises.
    private func keepOrphan(_ dir: Node, _ name: String, _ view: View) {
        guard let n = nodesLock.locked({ children[ChildKey(parent: dir.ino, name: name)] }), n.lookups > 0,
              !n.isDirectory, n.aliases.isEmpty, n.orphanFD < 0, (try? view.resolve(n)) != nil else { return }
        let writable = n.top == 0
        n.orphanFD = openat(view.layers[n.top].fd, View.at(n.path), (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOFOLLOW)
        n.orphanWritable = writable && n.orphanFD >= 0
    }

    /// Detaches the node at `name` (deleted or replaced): later lookups make a new one.
    private func detach(_ parent: Node, _ name: String) {
        nodesLock.locked { _ = dropName(parent, name) }
    }

    /// Removes one name of a node (caller holds nodesLock). A hard-linked node keeps serving
    /// through its other names; a node left without names is detached.
    private func dropName(_ parent: Node, _ name: String) -> Node? {
        guard let n = children.removeValue(forKey: ChildKey(parent: parent.ino, name: name)) else { return nil }
        if n.parent === parent && n.name == name {
            if n.aliases.isEmpty {
                n.parent = nil
                n.generation = .max
                hardlinks = hardlinks.filter { $0.value !== n }
            } else {
                let next = n.aliases.removeFirst()
                n.parent = next.parent
                n.name = next.name
            }
        } else {
            n.aliases.removeAll { $0.parent === parent && $0.name == name }
        }
        return n
    }

    private func move(_ parent: Node, _ name: String, to newParent: Node, _ newName: String) {
        nodesLock.locked {
            _ = dropName(newParent, newName)
            if let n = children.removeValue(forKey: ChildKey(parent: parent.ino, name: name)) {
                if n.parent === parent && n.name == name {
                    n.parent = newParent
                    n.name = newName
                } else if let i = n.aliases.firstIndex(where: { $0.parent === parent && $0.name == name }) {
                    n.aliases[i] = (newParent, newName)
                }
                children[ChildKey(parent: newParent.ino, name: newName)] = n
            }
        }
    }

    /// Hard links share one node (one kernel inode, so one page cache): the node a file of the
    /// upper with several names already has, now also known under `name` in `dir`.
    private func hardlinkNode(_ view: View, _ st: stat, _ dir: Node, _ name: String, counted: Bool = true) -> Node? {
        nodesLock.locked {
            guard let n = hardlinks[HardKey(view: ObjectIdentifier(view), ino: UInt64(st.st_ino))], n.parent != nil else { return nil }
            let key = ChildKey(parent: dir.ino, name: name)
            if children[key] !== n {
                _ = dropName(dir, name)
                children[key] = n
                if !(n.parent === dir && n.name == name) { n.aliases.append((dir, name)) }
            }
            if counted { n.lookups += 1 }
            return n
        }
    }

    private func registerHardlink(_ view: View, _ st: stat, _ n: Node) {
        nodesLock.locked { hardlinks[HardKey(view: ObjectIdentifier(view), ino: UInt64(st.st_ino))] = n }
    }

    private func forget(_ ino: UInt64, _ count: UInt64) {
        nodesLock.locked {
            guard let n = nodes[ino], ino != Self.rootIno else { return }
            if let view = n.view, n === view.root, view.deadErrno == 0 { return } // live branch roots stay
            n.lookups = n.lookups > count ? n.lookups - count : 0
            if n.lookups == 0 {
                nodes[ino] = nil
                for (p, name) in (n.parent.map { [($0, n.name)] } ?? []) + n.aliases
                where children[ChildKey(parent: p.ino, name: name)] === n {
                    children[ChildKey(parent: p.ino, name: name)] = nil
                }
                if !n.aliases.isEmpty || hardlinks.values.contains(where: { $0 === n }) {
                    hardlinks = hardlinks.filter { $0.value !== n }
                }
            }
        }
    }

    /// The node of `view` the kernel knows at `path`, if any.
    func knownNode(in view: View, path: String) -> Node? {
        nodesLock.locked {
            var n: Node = view.root
            for part in path.split(separator: "/") {
                guard let c = children[ChildKey(parent: n.ino, name: String(part))] else { return nil }
                n = c
            }
            return n
        }
    }

    // MARK: - session

    /// Mounts the session and starts the multithreaded loop on its own thread.
    func start() throws(FSError) {
        _ = mountPoint.withCString { lstat($0, &rootStat) }
        var ops = fuse_lowlevel_ops()
        Self.install(&ops)
        let args = ["branchfs", "-o", "allow_other,default_permissions,fsname=branchfs,subtype=sbx"]
        var cargs = args.map { strdup($0) }
        defer { cargs.forEach { free($0) } }
        let me = Unmanaged.passUnretained(self).toOpaque()
        guard let se = cbfs_session_new(Int32(cargs.count), &cargs, &ops, me) else { throw FSError(EINVAL, "fuse_session_new") }
        guard fuse_session_mount(se, mountPoint) == 0 else {
            fuse_session_destroy(se)
            throw FSError(EIO, "mount FUSE at \(mountPoint)")
        }
        // Our transport: libfuse's own calls, except that INIT also accepts KILLPRIV_V2, which
        // saves a GETXATTR of security.capability before every write (4,596 of them in a
        // `make -j2` of 200 C files).
        var io = fuse_custom_io(writev: cbfs_io_writev, read: cbfs_io_read,
                                splice_receive: cbfs_io_splice_receive, splice_send: cbfs_io_splice_send)
        guard fuse_session_custom_io(se, &io, fuse_session_fd(se)) == 0 else {
            fuse_session_unmount(se)
            fuse_session_destroy(se)
            throw FSError(EIO, "FUSE transport at \(mountPoint)")
        }
        session = se
        var thread = pthread_t()
        let box = Unmanaged.passRetained(self).toOpaque()
        pthread_create(&thread, nil, { arg in
            let server = Unmanaged<FuseServer>.fromOpaque(arg!).takeRetainedValue()
            _ = cbfs_session_loop_mt(server.session, 8)
            return nil
        }, box)
        loopThread = thread
    }

    /// Unmounts (lazily, so a busy mount cannot block the daemon's stop) and joins the loop.
    func stop() {
        guard let se = session else { return }
        fuse_session_exit(se)
        fuse_session_unmount(se)
        if let t = loopThread { pthread_join(t, nil) }
        fuse_session_destroy(se)
        session = nil
        loopThread = nil
    }

    // MARK: - invalidation (called outside the tree lock: the kernel may need locks a handler holds)

    func invalidateEntry(parent: UInt64, name: String) {
        guard let se = session else { return }
        _ = name.withCString { fuse_lowlevel_notify_inval_entry(se, parent, $0, name.utf8.count) }
    }

    func invalidateInode(_ ino: UInt64) {
        guard let se = session else { return }
        _ = fuse_lowlevel_notify_inval_inode(se, ino, 0, 0)
    }

    /// Drops every cached entry, attribute and page of `view` (it died or its layers moved).
    func invalidateAll(of view: View) {
        let known = nodesLock.locked { nodes.values.filter { $0.view === view } }
        for n in known { invalidateInode(n.ino) }
        invalidateEntry(parent: Self.rootIno, name: view.id)
    }

    /// Drops what the kernel caches for `paths` in `view`: the entry, the inode, the parent's listing.
    func invalidate(paths: [String], in view: View) {
        for path in paths {
            let parentPath = path.parentPath
            guard let parent = knownNode(in: view, path: parentPath) else { continue }
            invalidateInode(parent.ino)
            if let n = knownNode(in: view, path: path) { invalidateInode(n.ino) }
            invalidateEntry(parent: parent.ino, name: path.lastComponent)
        }
    }

    // MARK: - handler plumbing

    static func server(_ req: fuse_req_t?) -> FuseServer {
        Unmanaged<FuseServer>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue()
    }

    enum Access { case read, write }

    /// Runs `body` for node `ino` of a live view, with the locks its access needs.
    private func withNode<T>(_ ino: UInt64, _ access: Access, _ body: (Node, View) throws(FSError) -> T) throws(FSError) -> T {
        guard let n = node(ino) else { throw FSError(ENOENT) }
        guard let view = n.view else { throw FSError(ino == Self.rootIno ? (access == .write ? EROFS : EPERM) : ESTALE) }
        if view.deadErrno != 0 { throw FSError(view.deadErrno) }
        switch access {
        case .read: return try resolving(view) { () throws(FSError) in try body(n, view) }
        case .write: return try writable(view) { () throws(FSError) in try resolving(view) { () throws(FSError) in try body(n, view) } }
        }
    }

    /// Runs `body` while `view` may be written: its write gate held shared (a commit of the
    /// branch waits for it, and it for the commit), the branch live and not frozen.
    private func writable<T>(_ view: View, _ body: () throws(FSError) -> T) throws(FSError) -> T {
        try view.writeGate.reading { () throws(FSError) in
            view.settling.wait()
            if view.deadErrno != 0 { throw FSError(view.deadErrno) }
            if view.frozen { throw FSError(EROFS) }
            return try body()
        }
    }

    /// Runs `body` with the layers stable (no commit applying) and the view's names to itself.
    private func resolving<T>(_ view: View, _ body: () throws(FSError) -> T) throws(FSError) -> T {
        try tree.reading { () throws(FSError) in try view.namespace.lockedThrowing(body) }
    }

    func timeout(_ view: View?) -> Double { view?.id == BranchStore.mainID ? Self.mainTimeout : Self.branchTimeout }

    /// The kernel's own rule (`auto_inval_data`) would be: drop a file's pages whenever a
    /// fresh mtime differs from the cached one. It is off for the connection, since in a branch
    /// only our own writes move an mtime and every write-through WRITE would then cost the
    /// file its pages (measured: `make -j2` sent 3,880 GETATTRs and 3,465 READs instead of
    /// 1,248 and 1,150). The workspace does change behind our back, so for `main` the rule is
    /// kept here: a file whose mtime moved since we last reported it loses its pages before the
    /// new attributes go out. `deferred` when the caller holds locks a READ of that file needs
    /// (the kernel waits for the file's locked pages), then it happens just after the reply.
    private func dropStalePages(_ n: Node, _ st: stat, deferred: Bool = false) {
        guard st.st_mode & S_IFMT == S_IFREG, n.view?.id == BranchStore.mainID else { return }
        let moved = nodesLock.locked { () -> Bool in
            defer { n.reportedMtime = st.st_mtim }
            guard let was = n.reportedMtime else { return false }
            return was.tv_sec != st.st_mtim.tv_sec || was.tv_nsec != st.st_mtim.tv_nsec
        }
        guard moved else { return }
        if deferred { invalidator.async { [weak self] in self?.invalidateInode(n.ino) } } else { invalidateInode(n.ino) }
    }

    private func entry(_ n: Node, _ st: stat) -> fuse_entry_param {
        var e = fuse_entry_param()
        e.ino = n.ino
        e.attr = st
        e.attr_timeout = timeout(n.view)
        e.entry_timeout = timeout(n.view)
        return e
    }

    private func replyEntry(_ req: fuse_req_t?, _ n: Node, _ st: stat) {
        dropStalePages(n, st)
        var e = entry(n, st)
        fuse_reply_entry(req, &e)
    }

    private static func caller(_ req: fuse_req_t?) -> (uid: uid_t, gid: gid_t) {
        let ctx = fuse_req_ctx(req)!.pointee
        return (ctx.uid, ctx.gid)
    }

    /// New entries belong to the caller; a setgid directory passes its group on (POSIX).
    private func ownNew(_ view: View, _ dir: Node, _ rel: String, _ req: fuse_req_t?) {
        guard uid == 0 else { return }
        var (u, g) = Self.caller(req)
        if let ps = try? view.stat(dir), ps.st_mode & S_ISGID != 0 { g = ps.st_gid }
        _ = fchownat(view.upper.fd, rel, u, g, AT_SYMLINK_NOFOLLOW)
    }

    static func run(_ req: fuse_req_t?, _ body: () throws(FSError) -> Void) {
        do { try body() } catch { fuse_reply_err(req, error.errno) }
    }

    // MARK: - handlers

    func lookup(_ req: fuse_req_t?, _ parentIno: UInt64, _ name: String) throws(FSError) {
        if parentIno == Self.rootIno {
            guard let view = provider?.view(named: name) else { throw FSError(ENOENT) }
            // A dead branch is gone; a view a failed commit stopped says so until the restart.
            guard view.deadErrno == 0 else { throw FSError(view.deadErrno == EIO ? EIO : ENOENT) }
            let st = try resolving(view) { () throws(FSError) in try view.stat(view.root) }
            nodesLock.locked { view.root.lookups += 1 }
            return replyEntry(req, view.root, st)
        }
        let found: (Node, stat)? = try withNode(parentIno, .read) { (dir, view) throws(FSError) in
            try view.resolve(dir)
            guard dir.isDirectory else { throw FSError(ENOTDIR) }
            guard let p = view.probe(dir, name) else { return nil }
            return (lookedUp(dir, name, p, view), p.st)
        }
        guard let (n, st) = found else {
            // Negative entry, cached like the rest; a commit invalidates the names it adds.
            var e = fuse_entry_param()
            e.entry_timeout = timeout(node(parentIno)?.view)
            fuse_reply_entry(req, &e)
            return
        }
        replyEntry(req, n, st)
    }

    /// The node for an entry the kernel is told about (one more lookup), with its resolution.
    /// Hard-linked upper files share one node.
    private func lookedUp(_ dir: Node, _ name: String, _ p: View.Probe, _ view: View) -> Node {
        let linked = p.top == 0 && p.dirLayers.isEmpty && p.st.st_nlink > 1
        if linked, let n = hardlinkNode(view, p.st, dir, name) { return n }
        let n = child(dir, name, isDirectory: !p.dirLayers.isEmpty)
        if linked { registerHardlink(view, p.st, n) }
        n.top = p.top
        n.dirLayers = p.dirLayers
        n.isDirectory = !p.dirLayers.isEmpty
        n.generation = view.generation
        return n
    }

    func getattr(_ req: fuse_req_t?, _ ino: UInt64) throws(FSError) {
        if ino == Self.rootIno {
            var st = rootStat // never stat the mount point itself: that would call this handler
            st.st_ino = ino_t(Self.rootIno)
            st.st_mode = S_IFDIR | 0o755 // the branch list; each branch keeps its own permissions
            st.st_nlink = 2
            fuse_reply_attr(req, &st, 1)
            return
        }
        var st = try withNode(ino, .read) { (n, view) throws(FSError) -> stat in
            let fd = n.orphanFD
            if fd >= 0 {
                var st = stat()
                guard fstat(fd, &st) == 0 else { throw .last("fstat") }
                return st
            }
            return try view.stat(n)
        }
        if let n = node(ino) { dropStalePages(n, st) }
        fuse_reply_attr(req, &st, timeout(node(ino)?.view))
    }

    func setattr(_ req: fuse_req_t?, _ ino: UInt64, _ attr: UnsafeMutablePointer<stat>, _ toSet: Int32) throws(FSError) {
        let a = attr.pointee
        var st = try withNode(ino, .write) { (n, view) throws(FSError) -> stat in
            if n.orphanFD >= 0 { return try Self.setattrOrphan(n.orphanFD, a, toSet) }
            try view.copyUp(n, data: !(toSet & FUSE_SET_ATTR_SIZE != 0 && a.st_size == 0))
            let rel = View.at(n.path)
            let fd = view.upper.fd
            if toSet & FUSE_SET_ATTR_MODE != 0 {
                guard fchmodat(fd, rel, a.st_mode & 0o7777, 0) == 0 else { throw .last("chmod") }
            }
            if toSet & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID) != 0 {
                let u = toSet & FUSE_SET_ATTR_UID != 0 ? a.st_uid : uid_t.max
                let g = toSet & FUSE_SET_ATTR_GID != 0 ? a.st_gid : gid_t.max
                guard fchownat(fd, rel, u, g, AT_SYMLINK_NOFOLLOW) == 0 else { throw .last("chown") }
            }
            if toSet & FUSE_SET_ATTR_SIZE != 0 {
                let f = openat(fd, rel, O_WRONLY | O_CLOEXEC | O_NOFOLLOW)
                guard f >= 0 else { throw .last("open for truncate") }
                defer { close(f) }
                dropSetID(f, ino, req)
                guard ftruncate(f, a.st_size) == 0 else { throw .last("truncate") }
            }
            let timeBits = FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME_NOW
            if toSet & timeBits != 0 {
                var times = [timespec(tv_sec: 0, tv_nsec: CBFS_UTIME_OMIT), timespec(tv_sec: 0, tv_nsec: CBFS_UTIME_OMIT)]
                if toSet & FUSE_SET_ATTR_ATIME_NOW != 0 { times[0].tv_nsec = CBFS_UTIME_NOW } else if toSet & FUSE_SET_ATTR_ATIME != 0 { times[0] = a.st_atim }
                if toSet & FUSE_SET_ATTR_MTIME_NOW != 0 { times[1].tv_nsec = CBFS_UTIME_NOW } else if toSet & FUSE_SET_ATTR_MTIME != 0 { times[1] = a.st_mtim }
                guard utimensat(fd, rel, &times, AT_SYMLINK_NOFOLLOW) == 0 else { throw .last("utimens") }
            }
            return try view.stat(n)
        }
        if let n = node(ino) { dropStalePages(n, st) }
        fuse_reply_attr(req, &st, timeout(node(ino)?.view))
    }

    /// setattr of an unlinked, still open file: through its fd.
    private static func setattrOrphan(_ fd: Int32, _ a: stat, _ toSet: Int32) throws(FSError) -> stat {
        if toSet & FUSE_SET_ATTR_MODE != 0, fchmod(fd, a.st_mode & 0o7777) != 0 { throw .last("fchmod") }
        if toSet & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID) != 0 {
            let u = toSet & FUSE_SET_ATTR_UID != 0 ? a.st_uid : uid_t.max
            let g = toSet & FUSE_SET_ATTR_GID != 0 ? a.st_gid : gid_t.max
            if fchown(fd, u, g) != 0 { throw .last("fchown") }
        }
        if toSet & FUSE_SET_ATTR_SIZE != 0, ftruncate(fd, a.st_size) != 0 { throw .last("ftruncate") }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .last("fstat") }
        return st
    }

    func readlink(_ req: fuse_req_t?, _ ino: UInt64) throws(FSError) {
        let target = try withNode(ino, .read) { (n, view) throws(FSError) -> String in
            try view.resolve(n)
            guard let t = Overlay.readlink(view.layers[n.top].fd, View.at(n.path)) else { throw .last("readlink") }
            return t
        }
        fuse_reply_readlink(req, target)
    }

    /// Creates a new entry with `make(upperFD, rel, needsOpaque)` and replies with its entry.
    private func createEntry(_ req: fuse_req_t?, _ parentIno: UInt64, _ name: String,
                             _ make: (Int32, String, Bool) throws(FSError) -> Void) throws(FSError) {
        let (n, st) = try makeEntry(req, parentIno, name, make)
        replyEntry(req, n, st)
    }

    private func makeEntry(_ req: fuse_req_t?, _ parentIno: UInt64, _ name: String,
                           _ make: (Int32, String, Bool) throws(FSError) -> Void) throws(FSError) -> (Node, stat) {
        try withNode(parentIno, .write) { (dir, view) throws(FSError) -> (Node, stat) in
            try view.resolve(dir)
            guard dir.isDirectory else { throw FSError(ENOTDIR) }
            if view.probe(dir, name) != nil { throw FSError(EEXIST) }
            let hidden = try view.prepareNewEntry(dir, name)
            let rel = dir.path.appending(component: name)
            try make(view.upper.fd, rel, hidden)
            ownNew(view, dir, rel, req)
            detach(dir, name)
            guard let st = Overlay.lstat(view.upper.fd, rel) else { throw .last("stat new entry") }
            let n = child(dir, name, isDirectory: st.st_mode & S_IFMT == S_IFDIR)
            n.top = 0
            n.dirLayers = n.isDirectory ? [0] : []
            n.generation = view.generation
            return (n, st)
        }
    }

    func mknod(_ req: fuse_req_t?, _ parent: UInt64, _ name: String, _ mode: mode_t, _ rdev: UInt64) throws(FSError) {
        try createEntry(req, parent, name) { (fd, rel, _) throws(FSError) in
            guard cbfs_mknodat(fd, rel, mode, rdev) == 0 else { throw .last("mknod") }
        }
    }

    func mkdir(_ req: fuse_req_t?, _ parent: UInt64, _ name: String, _ mode: mode_t) throws(FSError) {
        try createEntry(req, parent, name) { (fd, rel, hidesLower) throws(FSError) in
            guard mkdirat(fd, rel, mode) == 0 else { throw .last("mkdir") }
            if hidesLower { try Overlay.setOpaque(fd, rel) }
        }
    }

    func symlink(_ req: fuse_req_t?, _ target: String, _ parent: UInt64, _ name: String) throws(FSError) {
        try createEntry(req, parent, name) { (fd, rel, _) throws(FSError) in
            guard symlinkat(target, fd, rel) == 0 else { throw .last("symlink") }
        }
    }

    func unlink(_ req: fuse_req_t?, _ parentIno: UInt64, _ name: String, directory: Bool) throws(FSError) {
        try withNode(parentIno, .write) { (dir, view) throws(FSError) in
            try view.resolve(dir)
            guard let p = view.probe(dir, name) else { throw FSError(ENOENT) }
            let isDir = !p.dirLayers.isEmpty
            if directory && !isDir { throw FSError(ENOTDIR) }
            if !directory && isDir { throw FSError(EISDIR) }
            if directory {
                let probeNode = Node(ino: 0, view: view, parent: dir, name: name, isDirectory: true)
                probeNode.top = p.top
                probeNode.dirLayers = p.dirLayers
                probeNode.generation = view.generation
                guard try view.list(probeNode).isEmpty else { throw FSError(ENOTEMPTY) }
            }
            if !directory { keepOrphan(dir, name, view) }
            try view.removeEntry(dir, name, directory: directory)
            detach(dir, name)
        }
        fuse_reply_err(req, 0)
    }

    func rename(_ req: fuse_req_t?, _ parentIno: UInt64, _ name: String, _ newParentIno: UInt64, _ newName: String, _ flags: UInt32) throws(FSError) {
        if flags & CBFS_RENAME_EXCHANGE != 0 { throw FSError(EINVAL) }
        guard let dst = node(newParentIno) else { throw FSError(ENOENT) }
        try withNode(parentIno, .write) { (src, view) throws(FSError) in
            guard dst.view === view else { throw FSError(EXDEV) }
            try view.resolve(src)
            try view.resolve(dst)
            guard let sp = view.probe(src, name) else { throw FSError(ENOENT) }
            let srcIsDir = !sp.dirLayers.isEmpty
            let tp = view.probe(dst, newName)
            if let tp {
                if flags & CBFS_RENAME_NOREPLACE != 0 { throw FSError(EEXIST) }
                let targetIsDir = !tp.dirLayers.isEmpty
                if srcIsDir && !targetIsDir { throw FSError(ENOTDIR) }
                if !srcIsDir && targetIsDir { throw FSError(EISDIR) }
                if src === dst && name == newName { return }
                if targetIsDir {
                    let t = Node(ino: 0, view: view, parent: dst, name: newName, isDirectory: true)
                    t.top = tp.top; t.dirLayers = tp.dirLayers; t.generation = view.generation
                    guard try view.list(t).isEmpty else { throw FSError(ENOTEMPTY) }
                }
            }
            // Refuse moving a directory into itself.
            if srcIsDir {
                var a: Node? = dst
                while let x = a, x.view != nil {
                    if x.parent === src && x.name == name { throw FSError(EINVAL) }
                    a = x.parent
                }
            }
            if let tp, tp.dirLayers.isEmpty { keepOrphan(dst, newName, view) }
            try view.renameEntry(src, name, sp, to: dst, newName, targetExists: tp != nil)
            move(src, name, to: dst, newName)
            // The moved node and everything below it now resolve through other layer paths.
            view.generation += 1
        }
        fuse_reply_err(req, 0)
    }

    func link(_ req: fuse_req_t?, _ ino: UInt64, _ newParentIno: UInt64, _ newName: String) throws(FSError) {
        guard let src = node(ino), let dir = node(newParentIno), src.view === dir.view else { throw FSError(EXDEV) }
        let (n, st) = try withNode(newParentIno, .write) { (dir, view) throws(FSError) -> (Node, stat) in
            try view.resolve(src)
            if src.isDirectory { throw FSError(EPERM) }
            if view.probe(dir, newName) != nil { throw FSError(EEXIST) }
            try view.copyUp(src)
            _ = try view.prepareNewEntry(dir, newName)
            let rel = dir.path.appending(component: newName)
            guard linkat(view.upper.fd, src.path, view.upper.fd, rel, 0) == 0 else { throw .last("link") }
            guard let st = Overlay.lstat(view.upper.fd, rel) else { throw .last("stat link") }
            registerHardlink(view, st, src)
            guard let n = hardlinkNode(view, st, dir, newName) else { throw FSError(ESTALE) }
            return (n, st)
        }
        replyEntry(req, n, st)
    }

    /// The fd to read node `ino` through: its orphan fd once unlinked, else its topmost layer's file.
    private func readFD(_ ino: UInt64) throws(FSError) -> (fd: Int32, owned: Bool) {
        try withNode(ino, .read) { (n, view) throws(FSError) in
            if n.orphanFD >= 0 { return (n.orphanFD, false) }
            try view.resolve(n)
            let fd = openat(view.layers[n.top].fd, View.at(n.path), O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
            guard fd >= 0 else { throw .last("open") }
            return (fd, true)
        }
    }

    /// Runs `body` with a writable fd on node `ino` in the upper, copying it up first.
    private func withWritableFD<T>(_ ino: UInt64, _ body: (Int32) throws(FSError) -> T) throws(FSError) -> T {
        guard let n = node(ino) else { throw FSError(ENOENT) }
        guard let view = n.view else { throw FSError(ESTALE) }
        // One hold of the write gate from copy-up to the last byte: a commit sees all of it or none.
        return try writable(view) { () throws(FSError) -> T in
            let (fd, owned) = try resolving(view) { () throws(FSError) -> (Int32, Bool) in
                if n.orphanFD >= 0 && n.orphanWritable { return (n.orphanFD, false) }
                try view.copyUp(n)
                let fd = openat(view.upper.fd, View.at(n.path), O_WRONLY | O_CLOEXEC | O_NOFOLLOW)
                guard fd >= 0 else { throw .last("open for write") }
                return (fd, true)
            }
            defer { if owned { close(fd) } }
            return try body(fd)
        }
    }

    func read(_ req: fuse_req_t?, _ ino: UInt64, _ size: Int, _ off: off_t) throws(FSError) {
        let (fd, owned) = try readFD(ino)
        defer { if owned { close(fd) } }
        _ = cbfs_reply_fd(req, fd, size, off)
    }

    /// What the kernel leaves to the server once it runs with FUSE_HANDLE_KILLPRIV_V2 (see
    /// `cbfs_io_writev`): a write or truncate by a caller other than root clears setuid, and
    /// setgid on a group-executable file. (Our own write, as root, keeps them on the backing
    /// file; capabilities go there by themselves.) The kernel's cached mode is dropped too.
    private func dropSetID(_ fd: Int32, _ ino: UInt64, _ req: fuse_req_t?) {
        guard Self.caller(req).uid != 0 else { return }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { return }
        var mode = st.st_mode & 0o7777
        if mode & S_ISUID != 0 { mode &= ~S_ISUID }
        if mode & (S_ISGID | S_IXGRP) == (S_ISGID | S_IXGRP) { mode &= ~S_ISGID }
        guard mode != st.st_mode & 0o7777, fchmod(fd, mode) == 0, let se = session else { return }
        _ = fuse_lowlevel_notify_inval_inode(se, ino, -1, 0) // attributes only: no page locks
    }

    func write(_ req: fuse_req_t?, _ ino: UInt64, _ buf: UnsafePointer<CChar>, _ size: Int, _ off: off_t) throws(FSError) {
        let put = { (fd: Int32) throws(FSError) -> Int in
            self.dropSetID(fd, ino, req)
            let n = pwrite(fd, buf, size, off)
            guard n >= 0 else { throw .last("write") }
            return n
        }
        fuse_reply_write(req, try withWritableFD(ino, put))
    }

    func fsync(_ req: fuse_req_t?, _ ino: UInt64, _ datasync: Int32) throws(FSError) {
        let sync = { (fd: Int32) throws(FSError) in
            guard (datasync != 0 ? fdatasync(fd) : Glibc.fsync(fd)) == 0 else { throw .last("fsync") }
        }
        let (fd, owned) = try readFD(ino)
        defer { if owned { close(fd) } }
        try sync(fd)
        fuse_reply_err(req, 0)
    }

    /// READDIR and READDIRPLUS. The plus form (the kernel asks for it when a listing is
    /// followed by stats, as in `ls -l` or a walk) answers each entry's lookup in the same
    /// round trip, counting a lookup only for the entries that fit in the reply.
    func readdir(_ req: fuse_req_t?, _ ino: UInt64, _ size: Int, _ off: off_t, plus: Bool) throws(FSError) {
        var buf = [CChar](repeating: 0, count: size)
        var used = 0
        /// Adds entry `i` (`lookup` makes its node, or nil for a bare entry); false when full.
        func add(_ i: Int, _ e: (name: String, ino: UInt64, type: UInt8), lookup: (() -> (Node, stat)?)?) -> Bool {
            var st = stat()
            st.st_ino = ino_t(e.ino == 0 ? UInt64(i + 1) : e.ino)
            st.st_mode = mode_t(e.type) << 12
            let room = size - used
            return buf.withUnsafeMutableBufferPointer { b -> Bool in
                let dst = b.baseAddress! + used
                guard plus else {
                    let need = fuse_add_direntry(req, dst, room, e.name, &st, off_t(i + 1))
                    if need > room { return false }
                    used += need
                    return true
                }
                guard fuse_add_direntry_plus(req, nil, 0, e.name, nil, 0) <= room else { return false }
                var entry = fuse_entry_param()
                entry.attr = st
                if let (n, nst) = lookup?() {
                    dropStalePages(n, nst, deferred: true) // the listing holds the view's locks
                    entry = self.entry(n, nst)
                }
                used += fuse_add_direntry_plus(req, dst, room, e.name, &entry, off_t(i + 1))
                return true
            }
        }
        let dots = [(name: ".", ino: UInt64(0), type: UInt8(DT_DIR)), (name: "..", ino: UInt64(0), type: UInt8(DT_DIR))]
        if ino == Self.rootIno {
            let all = dots + (provider?.liveBranchIDs() ?? []).map { ($0, UInt64(0), UInt8(DT_DIR)) }
            var i = Int(off)
            while i < all.count, add(i, all[i], lookup: nil) { i += 1 }
        } else {
            try withNode(ino, .read) { (n, view) throws(FSError) in
                // The kernel reads a listing in pieces from offset 0: build it once per pass,
                // not once per piece (a 100k-entry directory would be quadratic).
                if !(off > 0 && n.listing != nil && n.listingGeneration == view.generation) {
                    try view.resolve(n)
                    guard n.isDirectory else { throw FSError(ENOTDIR) }
                    n.listing = try view.list(n)
                    n.listingGeneration = view.generation
                }
                let all = dots + n.listing!
                var i = Int(off)
                while i < all.count {
                    let e = all[i]
                    let lookup: (() -> (Node, stat)?)? = i < 2 ? nil : {
                        guard let p = view.probe(n, e.name) else { return nil }
                        return (self.lookedUp(n, e.name, p, view), p.st)
                    }
                    guard add(i, e, lookup: lookup) else { break }
                    i += 1
                }
            }
        }
        fuse_reply_buf(req, buf, used)
    }

    func statfs(_ req: fuse_req_t?, _ ino: UInt64) throws(FSError) {
        let fd = node(ino)?.view?.upper.fd ?? AT_FDCWD
        var sv = statvfs()
        let r = fd == AT_FDCWD ? mountPoint.parentPath.withCString { statvfs($0, &sv) } : fstatvfs(fd, &sv)
        guard r == 0 else { throw .last("statfs") }
        fuse_reply_statfs(req, &sv)
    }

    func setxattr(_ req: fuse_req_t?, _ ino: UInt64, _ name: String, _ value: UnsafePointer<CChar>?, _ size: Int, _ flags: Int32) throws(FSError) {
        if Overlay.isPrivateXattr(name) { throw FSError(EPERM) }
        try withNode(ino, .write) { (n, view) throws(FSError) in
            try view.copyUp(n)
            let path = view.upper.path + "/" + n.path
            guard lsetxattr(path, name, value, size, flags) == 0 else { throw .last("setxattr") }
        }
        fuse_reply_err(req, 0)
    }

    func removexattr(_ req: fuse_req_t?, _ ino: UInt64, _ name: String) throws(FSError) {
        if Overlay.isPrivateXattr(name) { throw FSError(ENODATA) }
        try withNode(ino, .write) { (n, view) throws(FSError) in
            try view.copyUp(n)
            guard lremovexattr(view.upper.path + "/" + n.path, name) == 0 else { throw .last("removexattr") }
        }
        fuse_reply_err(req, 0)
    }

    func getxattr(_ req: fuse_req_t?, _ ino: UInt64, _ name: String, _ size: Int) throws(FSError) {
        if Overlay.isPrivateXattr(name) || ino == Self.rootIno { throw FSError(ENODATA) }
        let value = try withNode(ino, .read) { (n, view) throws(FSError) -> [UInt8] in
            try view.resolve(n)
            let path = view.layers[n.top].path + "/" + n.path
            var buf = [UInt8](repeating: 0, count: size == 0 ? 65536 : size)
            let len = lgetxattr(path, name, &buf, buf.count)
            guard len >= 0 else { throw .last("getxattr") }
            return Array(buf[0..<len])
        }
        if size == 0 { fuse_reply_xattr(req, value.count) } else { fuse_reply_buf(req, value, value.count) }
    }

    func listxattr(_ req: fuse_req_t?, _ ino: UInt64, _ size: Int) throws(FSError) {
        if ino == Self.rootIno { return size == 0 ? { fuse_reply_xattr(req, 0) }() : { fuse_reply_buf(req, nil, 0) }() }
        let names = try withNode(ino, .read) { (n, view) throws(FSError) -> [UInt8] in
            try view.resolve(n)
            var buf = [UInt8](repeating: 0, count: 65536)
            let len = llistxattr(view.layers[n.top].path + "/" + n.path, &buf, buf.count)
            guard len >= 0 else { throw .last("listxattr") }
            var out: [UInt8] = []
            for part in buf[0..<len].split(separator: 0, omittingEmptySubsequences: true) {
                if Overlay.isPrivateXattr(String(decoding: part, as: UTF8.self)) { continue }
                out += part
                out.append(0)
            }
            return out
        }
        if size == 0 { fuse_reply_xattr(req, names.count) } else if names.count > size { throw FSError(ERANGE) } else { fuse_reply_buf(req, names, names.count) }
    }

    // MARK: - the C table

    static func cname(_ p: UnsafePointer<CChar>?) -> String { String(cString: p!) }

    static func install(_ ops: inout fuse_lowlevel_ops) {
        ops.`init` = { userdata, conn in cbfs_conn_configure(conn, 1 << 20) }
        ops.lookup = { req, parent, name in FuseServer.run(req) { () throws(FSError) in try FuseServer.server(req).lookup(req, parent, FuseServer.cname(name)) } }
        ops.forget = { req, ino, n in FuseServer.server(req).forget(ino, n); fuse_reply_none(req) }
        ops.forget_multi = { req, count, list in
            let s = FuseServer.server(req)
            for i in 0..<count { s.forget(list![i].ino, list![i].nlookup) }
            fuse_reply_none(req)
        }
        ops.getattr = { req, ino, _ in FuseServer.run(req) { () throws(FSError) in try FuseServer.server(req).getattr(req, ino) } }
        ops.setattr = { req, ino, attr, toSet, _ in FuseServer.run(req) { () throws(FSError) in try FuseServer.server(req).setattr(req, ino, attr!, toSet) } }
        ops.readlink = { req, ino in FuseServer.run(req) { () throws(FSError) in try FuseServer.server(req).readlink(req, ino) } }
        // No CREATE: the kernel, answered ENOSYS once, makes new files with MKNOD and opens
        // them without a message like any other file, so they need no RELEASE either (one
        // round trip a new file instead of two).
        ops.mknod = { req, parent, name, mode, rdev in FuseServer.run(req) { () throws(FSError) in try FuseServer.server(req).mknod(req, parent, FuseServer.cname(name), mode, UInt64(rdev)) } }
        ops.mkdir = { req, parent, name, mode in FuseServer.run(req) { () throws(FSError) in try FuseServer.server(req).mkdir(req, parent, FuseServer.cname(name), mode) } }
        ops.unlink = { req, parent, name in FuseServer.run(req) { () throws(FSError) in try FuseServer.server(req).unlink(req, parent, FuseServer.cname(name), directory: false) } }
        ops.rmdir = { req, parent, name in FuseServer.run(req) { () throws(FSError) in try FuseServer.server(req).unlink(req, parent, FuseServer.cname(name), directory: true) } }
        ops.symlink = { req, target, parent, name in FuseServer.run(req) { () throws(FSError) in try FuseServer.server(req).symlink(req, FuseServer.cname(target), parent, FuseServer.cname(name)) } }
        ops.rename = { req, p, n, np, nn, flags in FuseServer.run(req) { () throws(FSError) in try FuseServer.server(req).rename(req, p, FuseServer.cname(n), np, FuseServer.cname(nn), flags) } }
        ops.link = { req, ino, np, nn in FuseServer.run(req) { () throws(FSError) in try FuseServer.server(req).link(req, ino, np, FuseServer.cname(nn)) } }
        ops.open = { req, _, _ in fuse_reply_err(req, ENOSYS) }
        ops.read = { req, ino, size, off, _ in FuseServer.run(req) { () throws(FSError) in try FuseServer.server(req).read(req, ino, size, off) } }
        ops.write = { req, ino, buf, size, off, _ in FuseServer.run(req) { () throws(FSError) in try FuseServer.server(req).write(req, ino, buf!, size, off) } }
        // Nothing to do on close: ENOSYS makes the kernel stop sending FLUSH at all.
        ops.flush = { req, _, _ in fuse_reply_err(req, ENOSYS) }
        ops.fsync = { req, ino, datasync, _ in FuseServer.run(req) { () throws(FSError) in try FuseServer.server(req).fsync(req, ino, datasync) } }
        // Zero-message opendir too: the kernel then caches listings (FOPEN_CACHE_DIR).
        ops.opendir = { req, _, _ in fuse_reply_err(req, ENOSYS) }
        ops.readdir = { req, ino, size, off, _ in FuseServer.run(req) { () throws(FSError) in try FuseServer.server(req).readdir(req, ino, size, off, plus: false) } }
        ops.readdirplus = { req, ino, size, off, _ in FuseServer.run(req) { () throws(FSError) in try FuseServer.server(req).readdir(req, ino, size, off, plus: true) } }
        ops.fsyncdir = { req, _, _, _ in fuse_reply_err(req, 0) }
        ops.statfs = { req, ino in FuseServer.run(req) { () throws(FSError) in try FuseServer.server(req).statfs(req, ino) } }
        ops.setxattr = { req, ino, name, value, size, flags in FuseServer.run(req) { () throws(FSError) in try FuseServer.server(req).setxattr(req, ino, FuseServer.cname(name), value, size, flags) } }
        ops.getxattr = { req, ino, name, size in FuseServer.run(req) { () throws(FSError) in try FuseServer.server(req).getxattr(req, ino, FuseServer.cname(name), size) } }
        ops.listxattr = { req, ino, size in FuseServer.run(req) { () throws(FSError) in try FuseServer.server(req).listxattr(req, ino, size) } }
        ops.removexattr = { req, ino, name in FuseServer.run(req) { () throws(FSError) in try FuseServer.server(req).removexattr(req, ino, FuseServer.cname(name)) } }
    }
}
