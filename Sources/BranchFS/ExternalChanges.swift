#if canImport(Glibc)
import Glibc
#endif

/// Changes made to the workspace behind BranchFS's back (an editor, a build, git) since a
/// branch was forked, found from ctimes: a path whose ctime is later than the fork changed
/// after it. Only the paths a commit carries are looked at, so the cost follows the change,
/// never the tree. ctime cannot be set by any tool, only moved forward by the kernel.
///
/// The clock is `CLOCK_REALTIME`, not the coarse clock the kernel stamps most ctimes from: a
/// file whose ctime was read since its last change (every stat does) gets its next stamp from
/// the fine clock (multigrain timestamps, Linux 6.13+), ahead of the coarse one, so a coarse
/// fork time would count the daemon's own commit just before a fork as a change after it.
/// With the fine clock every stamp taken before the fork is at most the fork time; a change
/// stamped from the coarse clock in the same tick as the fork (at most a jiffy) is missed.
enum ExternalChanges {
    /// `CLOCK_REALTIME` in nanoseconds since the epoch.
    static func now() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }

    /// The paths among `ops` (relative to the workspace directory `root`) that changed in the
    /// workspace after `since`, each once, in the order of the ops:
    /// - a path that exists there and that the commit replaces or deletes: its ctime, and
    ///   that of everything below it (the commit removes it all); for a directory it clears,
    ///   the entries it removes. A directory the commit keeps is not looked at itself: its
    ///   ctime moves whenever an entry in it comes or goes, and the branch's own entries in it
    ///   are checked one by one. So a mode, owner or xattr change of such a directory made on
    ///   both sides is not seen: the branch's wins;
    /// - a path missing there: the ctime of its nearest existing ancestor, which moved when
    ///   the path was deleted or renamed away. A file the branch added to a directory where
    ///   anything else was added, removed or renamed since the fork counts as well: a deleted
    ///   file and one that never was look alike. A path the commit deletes and that is gone
    ///   already is not a change: nothing is lost.
    ///
    /// `ownRootCtime`: the workspace root's ctime right after BranchFS itself last moved it
    /// (see `OwnRootChange`); the root at exactly that ctime has not changed from outside.
    static func find(_ ops: [CommitOp], root: Int32, since: Int64, ownRootCtime: Int64? = nil) -> [String] {
        var found: [String] = []
        var seen = Set<String>()
        func report(_ rel: String) { if seen.insert(rel).inserted { found.append(rel) } }
        func newer(_ st: stat) -> Bool { ctime(st) > since }
        /// Reports `rel` if it changed, and whatever changed below it.
        func walk(_ rel: String, _ st: stat) {
            if newer(st) { report(rel) }
            if st.st_mode & S_IFMT == S_IFDIR { walkEntries(rel, except: []) }
        }
        func walkEntries(_ dir: String, except kept: Set<String>) {
            for name in (try? Overlay.listNames(root, dir)) ?? [] where !kept.contains(name) {
                let rel = dir.appending(component: name)
                if let st = Overlay.lstat(root, rel) { walk(rel, st) }
            }
        }

        for op in ops {
            let rel = op.path
            guard let st = Overlay.lstat(root, rel) else {
                if case .delete = op { continue }
                var ancestor = rel
                var existing: stat?
                repeat {
                    ancestor = ancestor.parentPath
                    existing = Overlay.lstat(root, View.at(ancestor))
                } while existing == nil && !ancestor.isEmpty
                if let existing, newer(existing), !(ancestor.isEmpty && ctime(existing) == ownRootCtime) { report(rel) }
                continue
            }
            switch op {
            // What they replace goes, a whole directory tree included.
            case .delete, .install: walk(rel, st)
            // An existing directory stays; anything else there goes.
            case .mkdir: if st.st_mode & S_IFMT != S_IFDIR { walk(rel, st) }
            case let .clear(_, keep): walkEntries(rel, except: Set(keep))
            case .meta: break
            // Commits into a branch: they leave the workspace alone.
            case .whiteout, .replaceDir, .move: break
            }
        }
        return found
    }

    static func ctime(_ st: stat) -> Int64 { Int64(st.st_ctim.tv_sec) * 1_000_000_000 + Int64(st.st_ctim.tv_nsec) }
}

/// The workspace root's ctime right after BranchFS last moved it outside a commit: when the
/// state lives on another filesystem, a commit stages in a hidden directory of the workspace
/// root, and removing it after a failed or interrupted (crashed, then recovered) commit moves
/// the root's ctime. A branch forked before would then count every top-level path it adds as
/// changed from outside, and could never commit. Kept in `<state>/workspace-root-ctime`
/// (decimal nanoseconds), not fsynced: lost, the branch is only refused as before. A host
/// change between our removal and this record is missed, like one between a commit's check
/// and its apply.
struct OwnRootChange {
    let file: String
    private(set) var ctime: Int64?

    init(stateDirectory: String) {
        file = stateDirectory + "/workspace-root-ctime"
        ctime = Overlay.readFile(file).flatMap { Int64(String(decoding: $0, as: UTF8.self)) }
    }

    /// Records the root's ctime now, after BranchFS itself moved it.
    mutating func record(workspace: String) {
        guard let st = Overlay.lstat(AT_FDCWD, workspace) else { return }
        ctime = ExternalChanges.ctime(st)
        let fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        _ = Overlay.writeAll(fd, Array(String(ctime!).utf8), at: 0)
        close(fd)
    }
}
