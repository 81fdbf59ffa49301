import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Whole-file reads and writes for the small files sbx handles (profiles,
/// cached filters, /etc copies), with EINTR and short transfers handled once.
enum FileIO {
    /// The bytes of a regular file of at most `limit` bytes.
    static func read(_ path: String, limit: Int, followSymlinks: Bool = true) throws(Errno) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC | (followSymlinks ? 0 : O_NOFOLLOW))
        guard fd >= 0 else { throw Errno(rawValue: errno) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw Errno(rawValue: errno) }
        guard st.st_mode & S_IFMT == S_IFREG else { throw Errno.invalidArgument }
        guard Int(st.st_size) <= limit else { throw Errno.fileTooLarge }
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw Errno(rawValue: errno) }
            if n == 0 { break }  // shrank while we read
            done += n
        }
        return Array(bytes.prefix(done))
    }

    /// Creates `path` (which must not exist) with exactly `mode` and the given bytes.
    static func create(_ path: String, _ bytes: [UInt8], mode: mode_t) -> Bool {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return false }
            done += n
        }
        return fchmod(fd, mode) == 0  // umask may have narrowed it
    }
}
