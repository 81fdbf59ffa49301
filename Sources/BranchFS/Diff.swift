#if canImport(Glibc)
import Glibc
#endif

/// What a branch changed relative to its parent's view, found by walking only the branch's
/// own delta (cost grows with the change). A file copied up but left identical is not a change.
enum Differ {
    static func diff(child: View, parent: View) throws(FSError) -> [BranchChange] {
        let c = child.upper.fd
        var out: [BranchChange] = []

        /// Every path under `dir` in the parent's view, reported deleted (directories as one entry).
        func walk(_ dir: String, exact: Bool) throws(FSError) {
            let parentDir = parent.transientPath(dir)
            var mine = Set<String>()
            for e in try Overlay.listEntries(c, View.at(dir)).sorted(by: { $0.name < $1.name }) {
                let rel = dir.appending(component: e.name)
                guard let st = Overlay.lstat(c, rel) else { continue }
                let theirs = parentDir.flatMap { parent.probe($0, e.name) }
                if Overlay.isWhiteout(st) {
                    if theirs != nil && !exact { out.append(BranchChange(path: rel, kind: .deleted)) }
                    continue
                }
                mine.insert(e.name)
                let isDir = st.st_mode & S_IFMT == S_IFDIR
                guard let theirs else {
                    out.append(BranchChange(path: rel, kind: .added))
                    if isDir { try walk(rel, exact: true) }
                    continue
                }
                let theirsIsDir = !theirs.dirLayers.isEmpty
                if isDir != theirsIsDir {
                    out.append(BranchChange(path: rel, kind: .modified))
                    if isDir { try walk(rel, exact: true) }
                } else if isDir {
                    if metadataDiffers(st, theirs.st) { out.append(BranchChange(path: rel, kind: .modified)) }
                    try walk(rel, exact: Overlay.isOpaque(c, rel))
                } else if try differs(c, rel, st, parent.layers[theirs.top].fd, theirs.st) {
                    out.append(BranchChange(path: rel, kind: .modified))
                }
            }
            // Below an opaque directory, whatever the parent has that the branch lacks is gone.
            if exact, let parentDir, (try? parent.resolve(parentDir)) != nil {
                for e in try parent.list(parentDir) where !mine.contains(e.name) {
                    out.append(BranchChange(path: dir.appending(component: e.name), kind: .deleted))
                }
            }
        }
        try walk("", exact: false)
        return out.sorted { $0.path < $1.path }
    }

    static func metadataDiffers(_ a: stat, _ b: stat) -> Bool {
        a.st_mode != b.st_mode || a.st_uid != b.st_uid || a.st_gid != b.st_gid
    }

    static func differs(_ afd: Int32, _ arel: String, _ a: stat, _ bfd: Int32, _ b: stat) throws(FSError) -> Bool {
        if a.st_mode != b.st_mode || a.st_uid != b.st_uid || a.st_gid != b.st_gid || a.st_size != b.st_size { return true }
        switch a.st_mode & S_IFMT {
        case S_IFLNK: return Overlay.readlink(afd, arel) != Overlay.readlink(bfd, arel)
        case S_IFREG: return !sameContent(afd, arel, bfd, arel)
        default: return a.st_rdev != b.st_rdev
        }
    }

    static func sameContent(_ afd: Int32, _ arel: String, _ bfd: Int32, _ brel: String) -> Bool {
        let x = openat(afd, arel, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        let y = openat(bfd, brel, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        defer { if x >= 0 { close(x) }; if y >= 0 { close(y) } }
        guard x >= 0, y >= 0 else { return false }
        var p = [UInt8](repeating: 0, count: 1 << 16), q = p
        while true {
            let n = read(x, &p, p.count), m = read(y, &q, q.count)
            if n != m || n < 0 { return false }
            if n == 0 { return true }
            if memcmp(p, q, n) != 0 { return false }
        }
    }
}
