#if canImport(Glibc)
import Glibc
#endif

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

/// A readers-writer lock that prefers writers, so a commit waiting for the tree is not
/// starved by a stream of reads.
final class RWLock: @unchecked Sendable {
    private var l = pthread_rwlock_t()
    init() {
        var attr = pthread_rwlockattr_t()
        pthread_rwlockattr_init(&attr)
        pthread_rwlockattr_setkind_np(&attr, Int32(PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP))
        pthread_rwlock_init(&l, &attr)
        pthread_rwlockattr_destroy(&attr)
    }
    deinit { pthread_rwlock_destroy(&l) }
    func reading<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        pthread_rwlock_rdlock(&l)
        defer { pthread_rwlock_unlock(&l) }
        return try body()
    }
    func writing<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        pthread_rwlock_wrlock(&l)
        defer { pthread_rwlock_unlock(&l) }
        return try body()
    }
}
