import CBranchFS

#if canImport(Glibc)
import Glibc
#endif

/// One directory of the stack: a branch's delta (its "upper") or the workspace itself.
final class Layer: @unchecked Sendable {
    let path: String
    let fd: Int32
    init(path: String) throws(FSError) {
        self.path = path
        fd = try Overlay.openDirectory(path)
    }
    deinit { close(fd) }
}

/// A file or directory of one view, as the kernel knows it (one FUSE node id). Identity is
/// (parent, name): a rename moves the node; resolution (which layer holds it) is cached per
/// view generation and recomputed after a commit changed the layers underneath.
final class Node: @unchecked Sendable {
    let ino: UInt64
    /// Weak: a view owns its root node, and a dead view must free its layer fds even while
    /// the kernel still holds some of its nodes (they then answer ESTALE).
    weak var view: View?
    var parent: Node?
    var name: String
    var lookups: UInt64 = 0
    var generation: UInt64 = .max
    /// Index of the topmost layer holding this entry.
    var top = 0
    /// For directories: every layer whose directory merges into this one, top down.
    var dirLayers: [Int] = []
    var isDirectory: Bool
    /// An unlinked file the kernel still has open: served through this fd from then on.
    var orphanFD: Int32 = -1
    var orphanWritable = false
    /// The merged listing of a directory being read (see FuseServer.readdir).
    var listing: [(name: String, ino: UInt64, type: UInt8)]?
    var listingGeneration: UInt64 = 0
    /// Further names of a hard-linked file (the first name is parent/name).
    var aliases: [(parent: Node, name: String)] = []
    /// The mtime last reported to the kernel (files of `main`, see FuseServer.noteAttributes).
    var reportedMtime: timespec?

    deinit { if orphanFD >= 0 { close(orphanFD) } }

    init(ino: UInt64, view: View?, parent: Node?, name: String, isDirectory: Bool) {
        self.ino = ino
        self.view = view
        self.parent = parent
        self.name = name
        self.isDirectory = isDirectory
    }

    /// The path relative to the layer roots ("" for the branch root).
    var path: String {
        guard let parent, parent.view != nil else { return "" }
        return parent.path.appending(component: name)
    }
}

/// One branch seen through the stack of layers: its own upper first, then each ancestor's
/// upper, then the workspace. `main` is the workspace alone and writes it in place.
/// Every mutation goes to layer 0, after a copy-up of what it touches.
final class View: @unchecked Sendable {
    let id: String
    let layers: [Layer]
    /// Where copy-ups are assembled before a rename puts them in the upper (same filesystem).
    let work: Layer?
    /// Bumped whenever a commit changes the layers: cached resolutions are then redone.
    var generation: UInt64 = 0
    /// Set when the branch is invalidated, committed or aborted: every operation fails with it.
    var deadErrno: Int32 = 0
    /// A branch with live children is frozen: writes fail with EROFS.
    var frozen = false
    /// Shared by every modifying operation, exclusive while the branch is being committed.
    let writeGate = RWLock()
    /// A commit into this view that is applied but not yet durable everywhere: writers wait.
    let settling = Settling()
    /// Serialises namespace changes (create, unlink, rename, copy-up) within the view.
    let namespace = Mutex()
    /// Names hidden at the root of the bottom layer (commit staging in the workspace).
    let hiddenRootPrefix = ".sbx-staging-"
    var root: Node!

    init(id: String, layers: [Layer], work: Layer?) {
        self.id = id
        self.layers = layers
        self.work = work
    }

    var upper: Layer { layers[0] }
    var bottom: Int { layers.count - 1 }

    static func at(_ rel: String) -> String { rel.isEmpty ? "." : rel }

    // MARK: - resolution

    struct Probe {
        var top: Int
        var st: stat
        var dirLayers: [Int]
    }

    /// Finds `name` in directory `dir` through the layers `dir` merges, honouring whiteouts
    /// and opaque directories; `from` skips layers above it (used to ask "is it below?").
    func probe(_ dir: Node, _ name: String, from: Int = 0) -> Probe? {
        let rel = dir.path.appending(component: name)
        if dir.view != nil, dir.path.isEmpty, name.hasPrefix(hiddenRootPrefix) { return nil }
        var found: Probe?
        for l in dir.dirLayers where l >= from {
            guard let st = Overlay.lstat(layers[l].fd, rel) else { continue }
            if l < bottom && Overlay.isWhiteout(st) { break }
            let isDir = st.st_mode & S_IFMT == S_IFDIR
            if found == nil {
                found = Probe(top: l, st: st, dirLayers: [])
                guard isDir else { break }
            } else if !isDir { break }
            found!.dirLayers.append(l)
            if l < bottom && Overlay.isOpaque(layers[l].fd, rel) { break }
        }
        return found
    }

    /// Brings `n`'s cached resolution up to date; ENOENT when it no longer exists.
    func resolve(_ n: Node) throws(FSError) {
        if n.generation == generation { return }
        if n === root {
            n.top = 0
            n.dirLayers = Array(layers.indices)
        } else {
            guard let parent = n.parent else { throw FSError(ENOENT) }
            try resolve(parent)
            guard let p = probe(parent, n.name) else { throw FSError(ENOENT) }
            n.top = p.top
            n.dirLayers = p.dirLayers
            n.isDirectory = !p.dirLayers.isEmpty
        }
        n.generation = generation
    }

    func stat(_ n: Node) throws(FSError) -> stat {
        try resolve(n)
        guard let st = Overlay.lstat(layers[n.top].fd, View.at(n.path)) else { throw .last("stat \(n.path)") }
        return st
    }

    /// Whether a layer below the upper holds `name` in `dir` (so deleting it needs a whiteout).
    func lowerHas(_ dir: Node, _ name: String) -> Bool {
        layers.count > 1 && probe(dir, name, from: 1) != nil
    }

    /// The merged listing of a directory: first layer wins, whiteouts hide.
    func list(_ dir: Node) throws(FSError) -> [(name: String, ino: UInt64, type: UInt8)] {
        try resolve(dir)
        let rel = dir.path
        var seen = Set<String>()
        var out: [(String, UInt64, UInt8)] = []
        for l in dir.dirLayers {
            for e in try Overlay.listEntries(layers[l].fd, rel) where seen.insert(e.name).inserted {
                if rel.isEmpty && e.name.hasPrefix(hiddenRootPrefix) { continue }
                if l < bottom && e.type == UInt8(DT_CHR), let st = Overlay.lstat(layers[l].fd, rel.appending(component: e.name)),
                   Overlay.isWhiteout(st) { continue }
                out.append((e.name, e.ino, e.type))
            }
        }
        return out
    }

    // MARK: - copy-up

    /// Makes sure directory `dir` exists in the upper (copying its metadata from below).
    func ensureUpperDirectory(_ dir: Node) throws(FSError) {
        try resolve(dir)
        if dir.dirLayers.first == 0 { return }
        guard let parent = dir.parent else { throw FSError(EIO, "root missing from upper") }
        try ensureUpperDirectory(parent)
        let rel = dir.path
        guard let st = Overlay.lstat(layers[dir.top].fd, rel) else { throw .last("stat \(rel)") }
        // A stale whiteout cannot sit here: the directory is visible, so nothing above hides it.
        try preservingTimes(of: parent.path) { () throws(FSError) in try Overlay.copyEntry(layers[dir.top].fd, rel, st, to: upper.fd, rel) }
        dir.dirLayers.insert(0, at: 0)
        dir.top = 0
    }

    /// Runs a copy-up step that adds an entry to directory `rel` of the upper, keeping that
    /// directory's times: a copy-up is not a change the branch made (and a commit would
    /// otherwise carry, and fsync, a new mtime for every directory on the way).
    func preservingTimes(of rel: String, _ body: () throws(FSError) -> Void) throws(FSError) {
        let before = Overlay.lstat(upper.fd, View.at(rel))
        try body()
        if let b = before {
            var times = [b.st_atim, b.st_mtim]
            _ = utimensat(upper.fd, View.at(rel), &times, AT_SYMLINK_NOFOLLOW)
        }
    }

    /// Copies a non-directory up into the upper, whole file (copy_file_range), assembled in the
    /// work directory and renamed into place so a crash never leaves half a file visible.
    func copyUp(_ n: Node, data: Bool = true) throws(FSError) {
        try resolve(n)
        if n.top == 0 { return }
        if n.isDirectory { return try ensureUpperDirectory(n) }
        guard let parent = n.parent, let work else { throw FSError(EIO, "no work directory") }
        try ensureUpperDirectory(parent)
        let rel = n.path
        guard let st = Overlay.lstat(layers[n.top].fd, rel) else { throw .last("stat \(rel)") }
        let tmp = "copyup.\(n.ino).\(UInt32.random(in: 0...UInt32.max))"
        try Overlay.copyEntry(layers[n.top].fd, rel, st, to: work.fd, tmp, data: data)
        try preservingTimes(of: parent.path) { () throws(FSError) in
            guard renameat(work.fd, tmp, upper.fd, rel) == 0 else {
                let e = FSError.last("copy-up \(rel)")
                unlinkat(work.fd, tmp, 0)
                throw e
            }
        }
        n.top = 0
    }

    /// Prepares the upper to receive a new entry `name` in `dir` (which must not exist in the
    /// merged view): parent copied up, a whiteout at that name removed. Returns whether lower
    /// layers hold something at that name (a new directory must then be opaque).
    func prepareNewEntry(_ dir: Node, _ name: String) throws(FSError) -> Bool {
        try ensureUpperDirectory(dir)
        let rel = dir.path.appending(component: name)
        if layers.count > 1, let st = Overlay.lstat(upper.fd, rel) {
            guard Overlay.isWhiteout(st) else { throw FSError(EEXIST, rel) }
            guard unlinkat(upper.fd, rel, 0) == 0 else { throw .last("remove whiteout \(rel)") }
            return true
        }
        return false
    }

    /// Removes `name` from the merged view of `dir`: the upper's copy goes, and a whiteout
    /// covers whatever the lower layers still hold.
    func removeEntry(_ dir: Node, _ name: String, directory: Bool) throws(FSError) {
        let rel = dir.path.appending(component: name)
        let below = lowerHas(dir, name)
        if let st = Overlay.lstat(upper.fd, rel), !(layers.count > 1 && Overlay.isWhiteout(st)) {
            if directory {
                try Overlay.removeTree(upper.fd, rel) // only whiteouts remain in a merged-empty dir
            } else {
                guard unlinkat(upper.fd, rel, 0) == 0 else { throw .last("unlink \(rel)") }
            }
        }
        if below {
            try ensureUpperDirectory(dir)
            try Overlay.makeWhiteout(upper.fd, rel)
        }
    }

    // MARK: - rename

    /// A throwaway node for an entry found by `probe` (not registered with the kernel).
    func transientNode(_ dir: Node, _ name: String, _ p: Probe) -> Node {
        let n = Node(ino: 0, view: self, parent: dir, name: name, isDirectory: !p.dirLayers.isEmpty)
        n.top = p.top
        n.dirLayers = p.dirLayers
        n.generation = generation
        return n
    }

    /// Renames `name` in `src` to `newName` in `dst` within this view (the caller checked
    /// POSIX's preconditions). An entry that lives below the upper is copied up first; a
    /// directory merged from lower layers is copied whole into an opaque directory, so the
    /// renamed tree shows exactly what it showed before (overlayfs's redirect_dir=off semantics
    /// without the EXDEV).
    func renameEntry(_ src: Node, _ name: String, _ sp: Probe, to dst: Node, _ newName: String, targetExists: Bool) throws(FSError) {
        let srcRel = src.path.appending(component: name)
        let dstRel = dst.path.appending(component: newName)
        if layers.count == 1 {
            guard renameat(upper.fd, srcRel, upper.fd, dstRel) == 0 else { throw .last("rename") }
            return
        }
        try ensureUpperDirectory(src)
        try ensureUpperDirectory(dst)
        let srcBelow = lowerHas(src, name)
        let dstBelow = lowerHas(dst, newName)
        let isDir = !sp.dirLayers.isEmpty
        var from = (fd: upper.fd, rel: srcRel)
        if sp.top != 0 || (isDir && sp.dirLayers != [0]) {
            guard let work else { throw FSError(EIO, "no work directory") }
            let tmp = "rename.\(UInt32.random(in: 0...UInt32.max))"
            if isDir {
                try copyMerged(transientNode(src, name, sp), to: work.fd, tmp)
            } else {
                try Overlay.copyEntry(layers[sp.top].fd, srcRel, sp.st, to: work.fd, tmp)
            }
            from = (work.fd, tmp)
        }
        // A merged-empty directory (whiteouts only) or a whiteout: a directory cannot be
        // renamed over either, and neither belongs to the branch's view.
        if let st = Overlay.lstat(upper.fd, dstRel), st.st_mode & S_IFMT == S_IFDIR || Overlay.isWhiteout(st) {
            try Overlay.removeTree(upper.fd, dstRel)
        }
        guard renameat(from.fd, from.rel, upper.fd, dstRel) == 0 else {
            let e = FSError.last("rename")
            if from.fd != upper.fd { try? Overlay.removeTree(from.fd, from.rel) }
            throw e
        }
        if isDir && dstBelow { try Overlay.setOpaque(upper.fd, dstRel) }
        if srcBelow {
            if let st = Overlay.lstat(upper.fd, srcRel), !Overlay.isWhiteout(st) { try Overlay.removeTree(upper.fd, srcRel) }
            if Overlay.lstat(upper.fd, srcRel) == nil { try Overlay.makeWhiteout(upper.fd, srcRel) }
        }
    }

    /// Copies the merged tree under `dir` into `rel` of `dstFD` as one opaque directory.
    func copyMerged(_ dir: Node, to dstFD: Int32, _ rel: String) throws(FSError) {
        guard let st = Overlay.lstat(layers[dir.top].fd, View.at(dir.path)) else { throw .last("stat \(dir.path)") }
        try Overlay.copyEntry(layers[dir.top].fd, View.at(dir.path), st, to: dstFD, rel)
        try Overlay.setOpaque(dstFD, rel)
        for e in try list(dir) {
            guard let p = probe(dir, e.name) else { continue }
            if p.dirLayers.isEmpty {
                try Overlay.copyEntry(layers[p.top].fd, dir.path.appending(component: e.name), p.st, to: dstFD, rel + "/" + e.name)
            } else {
                try copyMerged(transientNode(dir, e.name, p), to: dstFD, rel + "/" + e.name)
            }
        }
        Overlay.applyMetadata(dstFD, rel, st) // children changed the directory's times
    }
}
