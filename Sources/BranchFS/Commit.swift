import CBranchFS
import SBXJSON

#if canImport(Glibc)
import Glibc
#endif

/// One step of applying a branch's delta to its parent. Every step is idempotent, so
/// recovery can replay a whole journal after a crash at any instant and reach the same state.
enum CommitOp: Equatable {
    /// Remove the target path, whatever it is.
    case delete(String)
    /// Put a whiteout at the target path unless one is there (parent is a branch).
    case whiteout(String)
    /// Make sure the target is a directory; `opaque` hides what lies below it.
    case mkdir(String, opaque: Bool)
    /// Replace the target with the child's (opaque) directory, moved whole (parent is a branch).
    case replaceDir(String)
    /// Move the child's entry over the target (parent is a branch).
    case move(String)
    /// Rename the staged copy `staged` over the target (parent is the workspace).
    case install(String, staged: String)
    /// Remove every entry of the target directory not named in `keep` (an opaque directory).
    case clear(String, keep: [String])
    /// Copy the child's directory mode, owner and times onto the target.
    case meta(String)

    var path: String {
        switch self {
        case let .delete(p), let .whiteout(p), let .mkdir(p, _), let .replaceDir(p), let .move(p),
             let .install(p, _), let .clear(p, _), let .meta(p): return p
        }
    }

    var json: JSON {
        switch self {
        case let .delete(p): return .array([.string("delete"), .string(p)])
        case let .whiteout(p): return .array([.string("whiteout"), .string(p)])
        case let .mkdir(p, o): return .array([.string("mkdir"), .string(p), .bool(o)])
        case let .replaceDir(p): return .array([.string("replace_dir"), .string(p)])
        case let .move(p): return .array([.string("move"), .string(p)])
        case let .install(p, s): return .array([.string("install"), .string(p), .string(s)])
        case let .clear(p, k): return .array([.string("clear"), .string(p), .array(k.map { .string($0) })])
        case let .meta(p): return .array([.string("meta"), .string(p)])
        }
    }

    init?(json: JSON) {
        guard let a = json.arrayValue, a.count >= 2, let op = a[0].stringValue, let p = a[1].stringValue else { return nil }
        switch (op, a.count) {
        case ("delete", 2): self = .delete(p)
        case ("whiteout", 2): self = .whiteout(p)
        case ("mkdir", 3): guard case let .bool(o) = a[2] else { return nil }; self = .mkdir(p, opaque: o)
        case ("replace_dir", 2): self = .replaceDir(p)
        case ("move", 2): self = .move(p)
        case ("install", 3): guard let s = a[2].stringValue else { return nil }; self = .install(p, staged: s)
        case ("clear", 3): guard let k = a[2].arrayValue else { return nil }; self = .clear(p, keep: k.compactMap(\.stringValue))
        case ("meta", 2): self = .meta(p)
        default: return nil
        }
    }
}

/// A planned commit: written to the journal before anything in the parent changes. Its
/// presence on disk is the commit point; recovery replays it.
struct CommitPlan {
    let id: String
    let child: String
    let parent: String
    let childUpper: String
    /// The directory the ops apply to: the parent's upper, or the workspace.
    let target: String
    /// Where staged copies wait (commits into the workspace only).
    let staging: String?
    var ops: [CommitOp]
    /// Staged files carried whole in the journal, by staged name (see `InlineFile`).
    var inline: [String: InlineFile] = [:]

    /// Names in the staging directory (commits into the workspace).
    var stagedNames: [String] {
        ops.compactMap { op in
            if case let .install(_, staged) = op { return staged }
            return nil
        }
    }

    var json: JSON {
        .object([
            ("id", .string(id)), ("child", .string(child)), ("parent", .string(parent)),
            ("child_upper", .string(childUpper)), ("target", .string(target)),
            ("staging", staging.map { .string($0) } ?? .null), ("ops", .array(ops.map(\.json))),
            ("inline", .object(inline.sorted { $0.key < $1.key }.map { ($0.key, $0.value.json) })),
        ])
    }

    init(id: String, child: String, parent: String, childUpper: String, target: String, staging: String?, ops: [CommitOp]) {
        self.id = id; self.child = child; self.parent = parent; self.childUpper = childUpper
        self.target = target; self.staging = staging; self.ops = ops
    }

    init?(json: JSON) {
        guard let id = json["id"]?.stringValue, let child = json["child"]?.stringValue, let parent = json["parent"]?.stringValue,
              let cu = json["child_upper"]?.stringValue, let target = json["target"]?.stringValue,
              let ops = json["ops"]?.arrayValue else { return nil }
        let parsed = ops.compactMap(CommitOp.init(json:))
        guard parsed.count == ops.count else { return nil }
        self.init(id: id, child: child, parent: parent, childUpper: cu, target: target, staging: json["staging"]?.stringValue, ops: parsed)
        for (name, file) in json["inline"]?.objectValue ?? [] {
            guard let f = InlineFile(json: file) else { return nil }
            inline[name] = f
        }
    }
}

/// fsyncs many files at once. One fsync per file is what makes a commit's cost follow the
/// change (syncfs would flush whatever else the disk holds: 200 ms instead of 13 here), and
/// issuing them from several threads (not Dispatch's one per core) lets the disk overlap them.
enum Durability {
    static func startPool() {
        var failed: Int32 = -1
        _ = cbfs_fsync_many(nil, 0, nil, 0, &failed)
    }

    /// fsyncs `paths` (files or directories) and the open files `fds`, all at once.
    static func fsyncAll(_ paths: [String], fds: [Int32] = []) throws(FSError) {
        guard !paths.isEmpty || !fds.isEmpty else { return }
        var cstrings = paths.map { strdup($0) }
        defer { cstrings.forEach { free($0) } }
        var failed: Int32 = -1
        let r = cstrings.withUnsafeMutableBufferPointer { buf in
            buf.withMemoryRebound(to: UnsafePointer<CChar>?.self) { paths in
                fds.withUnsafeBufferPointer { cbfs_fsync_many(paths.baseAddress, Int32(paths.count), $0.baseAddress, Int32($0.count), &failed) }
            }
        }
        if r != 0 {
            let i = Int(failed)
            throw FSError(-r, i < paths.count ? "fsync \(paths[i])" : "fsync of an installed file")
        }
    }
}

/// Plans, stages, journals and applies commits. Cost grows with the change: planning walks
/// only the child's upper, staging links (or copies) only the changed files.
enum Committer {
    /// Walks the child's delta and lists the ops that carry it into the parent; changes nothing.
    /// Into the workspace, each file gets a name in `staging`, where `stage` puts its copy.
    /// `parentView` answers "does something lie below the parent's upper at this path?".
    static func plan(id: String, child: View, parent: View, staging: String?) throws(FSError) -> CommitPlan {
        let c = child.upper.fd
        let intoWorkspace = parent.layers.count == 1
        var ops: [CommitOp] = []

        func walk(_ dir: String, exact: Bool) throws(FSError) {
            for e in try Overlay.listEntries(c, View.at(dir)).sorted(by: { $0.name < $1.name }) {
                let rel = dir.appending(component: e.name)
                guard let st = Overlay.lstat(c, rel) else { throw .last("stat \(rel)") }
                if Overlay.isWhiteout(st) {
                    if exact { continue } // nothing below an opaque directory to hide
                    ops.append(.delete(rel))
                    if !intoWorkspace && below(parent, rel) { ops.append(.whiteout(rel)) }
                } else if st.st_mode & S_IFMT == S_IFDIR {
                    let opaque = Overlay.isOpaque(c, rel)
                    if !intoWorkspace && opaque {
                        ops.append(.replaceDir(rel))
                        continue
                    }
                    var hides = false
                    if !intoWorkspace, let pst = Overlay.lstat(parent.upper.fd, rel), Overlay.isWhiteout(pst) { hides = true }
                    // A directory the target already has, with the same metadata, was only
                    // copied up on the way to a change below it: no step of its own.
                    let existing = Overlay.lstat(parent.upper.fd, rel).flatMap { $0.st_mode & S_IFMT == S_IFDIR ? $0 : nil }
                    if existing == nil || hides { ops.append(.mkdir(rel, opaque: hides)) }
                    if intoWorkspace && (opaque || exact) {
                        let keep = try Overlay.listEntries(c, rel).filter { entry in
                            guard let s = Overlay.lstat(c, rel + "/" + entry.name) else { return false }
                            return !Overlay.isWhiteout(s)
                        }.map(\.name)
                        ops.append(.clear(rel, keep: keep.sorted()))
                    }
                    try walk(rel, exact: exact || (intoWorkspace && opaque))
                    if existing == nil || !sameMetadata(c, rel, st, parent.upper.fd, existing!) { ops.append(.meta(rel)) }
                } else if intoWorkspace {
                    ops.append(.install(rel, staged: String(ops.count)))
                } else {
                    ops.append(.move(rel))
                }
            }
        }
        try walk("", exact: false)
        return CommitPlan(id: id, child: child.id, parent: parent.id, childUpper: child.upper.path,
                          target: parent.upper.path, staging: staging, ops: ops)
    }

    /// Puts the copy of every file `plan` installs into the staging directory (`stagingFD`):
    /// a hard link of the child's file when they share a filesystem, else a copy. Names of one
    /// inode are linked to its first staged name, so they stay linked in the workspace.
    /// Small files go into `plan.inline` too; the returned descriptors are open on them, for
    /// the caller to fsync once they are installed and then close. The caller makes the other
    /// staged files durable, all at once (see `Durability`).
    static func stage(_ plan: inout CommitPlan, from child: View, stagingFD: Int32) throws(FSError) -> [Int32] {
        let c = child.upper.fd
        let sameFS = plan.staging.map { sameDevice(plan.childUpper, $0) } ?? false
        var staged: [String: String] = [:] // "dev:ino" of the child's file -> its first staged name
        var fds: [Int32] = []
        var budget = InlineFile.maxCommitBytes
        do throws(FSError) {
            for case let .install(rel, name) in plan.ops {
                guard let st = Overlay.lstat(c, rel) else { throw .last("stat \(rel)") }
                let key = "\(st.st_dev):\(st.st_ino)"
                guard st.st_mode & S_IFMT == S_IFREG else {
                    try Overlay.copyEntry(c, rel, st, to: stagingFD, name)
                    continue
                }
                if let first = staged[key] {
                    guard linkat(stagingFD, first, stagingFD, name, 0) == 0 else { throw .last("stage link \(rel)") }
                    continue
                }
                if !(sameFS && linkat(c, rel, stagingFD, name, 0) == 0) {
                    try Overlay.copyEntry(c, rel, st, to: stagingFD, name)
                }
                staged[key] = name
                if st.st_nlink == 1, fds.count < InlineFile.maxCommitFiles, let (file, fd) = InlineFile.capture(stagingFD, name, budget: budget) {
                    plan.inline[name] = file
                    fds.append(fd)
                    budget -= file.data.count
                }
            }
        } catch {
            fds.forEach { close($0) }
            throw error
        }
        return fds
    }

    /// Writes the journal's inline files into staging again, durably, before a replay
    /// installs them: the copies a crash interrupted may have lost their data, wherever they are.
    static func restage(_ plan: CommitPlan) throws(FSError) {
        guard let staging = plan.staging, !plan.inline.isEmpty else { return }
        guard mkdir(staging, 0o700) == 0 || errno == EEXIST else { throw .last("mkdir \(staging)") }
        let s = try Overlay.openDirectory(staging)
        defer { close(s) }
        var fds: [Int32] = []
        defer { fds.forEach { close($0) } }
        for (name, file) in plan.inline.sorted(by: { $0.key < $1.key }) { fds.append(try file.write(s, name)) }
        try Durability.fsyncAll([staging], fds: fds)
    }

    /// Whether two directories agree on mode, owner, mtime and xattrs.
    static func sameMetadata(_ afd: Int32, _ rel: String, _ a: stat, _ bfd: Int32, _ b: stat) -> Bool {
        guard a.st_mode == b.st_mode, a.st_uid == b.st_uid, a.st_gid == b.st_gid,
              a.st_mtim.tv_sec == b.st_mtim.tv_sec, a.st_mtim.tv_nsec == b.st_mtim.tv_nsec else { return false }
        let x = openat(afd, View.at(rel), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)
        let y = openat(bfd, View.at(rel), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)
        defer { if x >= 0 { close(x) }; if y >= 0 { close(y) } }
        return x >= 0 && y >= 0 && Overlay.xattrs(x) == Overlay.xattrs(y)
    }

    /// Whether the parent's lower layers (below its upper) hold something at `rel`.
    static func below(_ view: View, _ rel: String) -> Bool {
        guard let dir = view.transientPath(rel.parentPath) else { return false }
        return view.lowerHas(dir, rel.lastComponent)
    }

    static func sameDevice(_ a: String, _ b: String) -> Bool {
        var sa = stat(), sb = stat()
        return lstat(a, &sa) == 0 && lstat(b, &sb) == 0 && sa.st_dev == sb.st_dev
    }

    /// Applies every op of `plan`; safe to run again on a partly applied plan.
    /// Returns the directories whose entries changed (to be fsynced by the caller).
    /// `trash`, a directory on the target's filesystem, receives a link to every file the commit
    /// replaces, so the rename does not free its blocks inline (~90 us a file here): the
    /// janitor deletes them later.
    @discardableResult
    static func apply(_ plan: CommitPlan, trash: String? = nil) throws(FSError) -> [String] {
        let t = try Overlay.openDirectory(plan.target)
        defer { close(t) }
        var trashFD: Int32 = -1
        if let trash, sameDevice(trash.parentPath, plan.target) {
            _ = mkdir(trash, 0o700)
            trashFD = open(trash, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        }
        defer { if trashFD >= 0 { close(trashFD) } }
        var replaced = 0
        /// Keeps the file at `rel` (about to be replaced) alive in the trash.
        func keepReplaced(_ rel: String) {
            guard trashFD >= 0, let st = Overlay.lstat(t, rel), st.st_mode & S_IFMT == S_IFREG, st.st_nlink == 1 else { return }
            replaced += 1
            _ = linkat(t, rel, trashFD, String(replaced), 0)
        }
        let c = open(plan.childUpper, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        defer { if c >= 0 { close(c) } }
        let s = plan.staging.map { open($0, O_RDONLY | O_DIRECTORY | O_CLOEXEC) } ?? -1
        defer { if s >= 0 { close(s) } }
        var touched = Set<String>()
        for op in plan.ops {
            let rel = op.path
            // Only what changes a directory marks it for fsync (a replay changes nothing).
            let parent = plan.target + "/" + rel.parentPath
            switch op {
            case .delete:
                if Overlay.lstat(t, rel) != nil { try Overlay.removeTree(t, rel); touched.insert(parent) }
            case .whiteout:
                if Overlay.lstat(t, rel) == nil { try Overlay.makeWhiteout(t, rel); touched.insert(parent) }
            case let .mkdir(_, opaque):
                if let st = Overlay.lstat(t, rel), st.st_mode & S_IFMT != S_IFDIR { try Overlay.removeTree(t, rel) }
                if Overlay.lstat(t, rel) == nil {
                    guard mkdirat(t, rel, 0o700) == 0 else { throw .last("mkdir \(rel)") }
                    touched.insert(parent)
                }
                if opaque { try Overlay.setOpaque(t, rel); touched.insert(plan.target + "/" + rel) }
            case .replaceDir, .move:
                guard c >= 0, Overlay.lstat(c, rel) != nil else { continue } // already moved
                if case .replaceDir = op { try Overlay.removeTree(t, rel) } else if let st = Overlay.lstat(t, rel), st.st_mode & S_IFMT == S_IFDIR {
                    try Overlay.removeTree(t, rel)
                }
                keepReplaced(rel)
                guard renameat(c, rel, t, rel) == 0 else { throw .last("move \(rel)") }
                touched.insert(parent)
            case let .install(_, staged):
                guard s >= 0, Overlay.lstat(s, staged) != nil else { continue } // already installed
                let existing = Overlay.lstat(t, rel)
                if let st = existing, st.st_mode & S_IFMT == S_IFDIR { try Overlay.removeTree(t, rel) }
                // A file the journal carries (restaged by every replay) swaps places with the one
                // it replaces, which leaves with the staging directory: a rename over an existing
                // file would make ext4 allocate and start writing the new file's blocks on the
                // spot (auto_da_alloc), 20-40 us a file here, when its data is not synced yet.
                if plan.inline[staged] != nil, let st = existing, st.st_mode & S_IFMT != S_IFDIR,
                   cbfs_renameat2(s, staged, t, rel, CBFS_RENAME_EXCHANGE) == 0 {
                    touched.insert(parent)
                    continue
                }
                keepReplaced(rel)
                guard renameat(s, staged, t, rel) == 0 else { throw .last("install \(rel)") }
                touched.insert(parent)
            case let .clear(_, keep):
                let keepSet = Set(keep)
                for name in try Overlay.listNames(t, rel) where !keepSet.contains(name) {
                    try Overlay.removeTree(t, rel + "/" + name)
                    touched.insert(plan.target + "/" + rel)
                }
            case .meta:
                guard c >= 0, let want = Overlay.lstat(c, rel), let have = Overlay.lstat(t, rel) else { continue }
                let from = openat(c, View.at(rel), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)
                let to = openat(t, View.at(rel), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)
                if from >= 0 && to >= 0 && Overlay.syncXattrs(from: from, to: to) { touched.insert(plan.target + "/" + rel) }
                if from >= 0 { close(from) }
                if to >= 0 { close(to) }
                if want.st_mode != have.st_mode || want.st_uid != have.st_uid || want.st_gid != have.st_gid
                    || want.st_mtim.tv_sec != have.st_mtim.tv_sec || want.st_mtim.tv_nsec != have.st_mtim.tv_nsec {
                    Overlay.updateMetadata(t, rel, have: have, want: want)
                    touched.insert(plan.target + "/" + rel)
                }
            }
        }
        return Array(touched)
    }
}

extension View {
    /// A transient node for directory `rel` of this view, resolved through the layers.
    func transientPath(_ rel: String) -> Node? {
        var n: Node = root
        guard (try? resolve(n)) != nil else { return nil }
        for part in rel.split(separator: "/") {
            guard let p = probe(n, String(part)), !p.dirLayers.isEmpty else { return nil }
            n = transientNode(n, String(part), p)
        }
        return n
    }
}
