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

/// Work that must finish before a view may change again: a commit returns once journaled and
/// applied, and its last fsyncs run in the background while writers of the parent wait here.
final class Settling: @unchecked Sendable {
    private var m = pthread_mutex_t()
    private var c = pthread_cond_t()
    private var pending = 0
    init() {
        pthread_mutex_init(&m, nil)
        pthread_cond_init(&c, nil)
    }
    deinit {
        pthread_cond_destroy(&c)
        pthread_mutex_destroy(&m)
    }
    func begin() {
        pthread_mutex_lock(&m)
        pending += 1
        pthread_mutex_unlock(&m)
    }
    func end() {
        pthread_mutex_lock(&m)
        pending -= 1
        if pending == 0 { pthread_cond_broadcast(&c) }
        pthread_mutex_unlock(&m)
    }
    func wait() {
        pthread_mutex_lock(&m)
        while pending > 0 { pthread_cond_wait(&c, &m) }
        pthread_mutex_unlock(&m)
    }
}
