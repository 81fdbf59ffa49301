import CBranchFS
import Dispatch
#if canImport(Glibc)
import Glibc
#endif

/// Empty directory pairs (a delta and its work directory) made ahead of time, each in block
/// groups of its own, that a fork takes with two renames.
///
/// Why spread: a branch's delta is a tree made and retired whole. Packed next to the last one, a
/// new delta allocates among the inodes a retired one just freed, and ext4 without a journal
/// steps over every inode freed in the last minute (six if its inode table block is still dirty)
/// with one buffer lookup each: 5000 files created next to a just-deleted 20k-file directory
/// took 3.5 s, against 0.08 s spread. A TOPDIR parent (`chattr +T`) makes ext4's Orlov allocator
/// spread its children, as it does home directories. Why ahead of time: that search visits
/// every block group, 0.16–0.34 ms a `mkdir` here against 0.02 ms, twice per fork.
///
/// `made/` (TOPDIR) is where the `mkdir`s run, holding that directory's lock; finished pairs
/// move to `ready/`, which forks rename out of, so a fork never waits behind a refill's search.
/// What a crash leaves in `made/` is removed at open; whole pairs in `ready/` are kept.
/// Filesystems without the flag ignore it: the stock then only saves nothing.
final class SpareDirectories: @unchecked Sendable {
    static let stock = 8
    private let made: String
    private let ready: String
    private let lock = Mutex()
    private var names: [String] = []
    private var stopped = false
    private let refiller = DispatchQueue(label: "sbx.branchfs.spares")

    /// Opens (creating) `directory`'s `made/` and `ready/` and starts filling the stock.
    init(directory: String) throws(BranchError) {
        made = directory + "/made"
        ready = directory + "/ready"
        for d in [directory, made, ready] {
            if mkdir(d, 0o700) != 0 && errno != EEXIST { throw .io("mkdir \(d)", errno: errno) }
        }
        let fd = open(made, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd >= 0 {
            _ = cbfs_set_topdir(fd)
            Glibc.close(fd)
        }
        for name in (try? Overlay.listNames(AT_FDCWD, made)) ?? [] { try? Overlay.removeTree(AT_FDCWD, made + "/" + name) }
        // A pair is kept only whole and empty, both halves judged together.
        let left = Set((try? Overlay.listNames(AT_FDCWD, ready)) ?? [])
        let readyDir = ready
        let isEmpty = { (name: String) in (try? Overlay.listNames(AT_FDCWD, readyDir + "/" + name))?.isEmpty == true }
        let whole = Set(left.filter { $0.hasSuffix(".l") }.map { String($0.dropLast(2)) }.filter { pair in
            [pair + ".l", pair + ".w"].allSatisfy { left.contains($0) && isEmpty($0) }
        })
        for name in left where !whole.contains(String(name.dropLast(2))) { try? Overlay.removeTree(AT_FDCWD, ready + "/" + name) }
        names = Array(whole)
        refill()
    }

    /// Moves a spare pair to `layer` and `work` (both absent), making one on the spot when the
    /// stock is empty, and has the stock refilled in the background.
    func take(layer: String, work: String) throws(BranchError) {
        defer { refill() }
        if let name = lock.locked({ names.popLast() }) {
            if rename(ready + "/" + name + ".l", layer) == 0, rename(ready + "/" + name + ".w", work) == 0 { return }
            // Not ours any more (removed behind our back): make the pair in place below.
            _ = rmdir(layer)
        }
        let name = try makePair()
        guard rename(ready + "/" + name + ".l", layer) == 0 else { throw .io("rename to \(layer)", errno: errno) }
        guard rename(ready + "/" + name + ".w", work) == 0 else { throw .io("rename to \(work)", errno: errno) }
    }

    /// Stops refilling and waits for a refill under way.
    func stop() {
        lock.locked { stopped = true }
        refiller.sync {}
    }

    private func refill() {
        refiller.async { [self] in
            while lock.locked({ !stopped && names.count < Self.stock }) {
                guard let name = try? makePair() else { return }
                lock.locked { names.append(name) }
            }
        }
    }

    /// Makes `ready/<name>.l` and `ready/<name>.w`, each in a block group of its own.
    private func makePair() throws(BranchError) -> String {
        let name = "s" + String(UInt64.random(in: 0...UInt64.max), radix: 16)
        for suffix in [".l", ".w"] {
            let from = made + "/" + name + suffix, to = ready + "/" + name + suffix
            guard mkdir(from, 0o700) == 0 else { throw .io("mkdir \(from)", errno: errno) }
            guard rename(from, to) == 0 else { throw .io("rename \(from) to \(to)", errno: errno) }
        }
        return name
    }
}
