import XCTest
@testable import BranchFS

/// A workspace, a state directory and a mounted BranchFS, all under one temp directory that
/// tearDown unmounts and removes.
class BranchFSTestCase: XCTestCase {
    var root = ""
    var workspace: String { root + "/ws" }
    var state: String { root + "/state" }
    var fs: BranchFS!

    override func setUpWithError() throws {
        guard getuid() == 0, access("/dev/fuse", R_OK | W_OK) == 0 else {
            throw XCTSkip("BranchFS tests need root and /dev/fuse (uid \(getuid()))")
        }
        root = "/tmp/sbx-branchfs-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: workspace, withIntermediateDirectories: true)
        try seed()
        fs = try BranchFS(workspace: workspace, stateDirectory: state)
    }

    override func tearDownWithError() throws {
        fs?.close()
        fs = nil
        if !root.isEmpty { try? FileManager.default.removeItem(atPath: root) }
    }

    /// The workspace every test starts from.
    func seed() throws {
        try put(workspace + "/README", "hello\n")
        try put(workspace + "/src/main.c", "int main(void) { return 0; }\n")
        try put(workspace + "/src/util.c", "int util;\n")
        try put(workspace + "/docs/a/b/deep.txt", "deep\n")
    }

    /// Writes `text` in place (open, truncate, write), creating parent directories.
    func put(_ path: String, _ text: String) throws {
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        let e = writeErrno(path, text)
        guard e == 0 else { throw POSIXError(POSIXErrorCode(rawValue: e) ?? .EIO) }
    }

    func get(_ path: String) -> String? {
        FileManager.default.contents(atPath: path).map { String(decoding: $0, as: UTF8.self) }
    }

    /// errno of writing `text` to `path` (0 on success).
    func writeErrno(_ path: String, _ text: String = "x") -> Int32 {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        if fd < 0 { return errno }
        defer { close(fd) }
        return write(fd, text, text.utf8.count) < 0 ? errno : 0
    }

    func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    func branch(from parent: String = "main") throws -> String { try fs.create(from: parent)[0].id }
    func path(_ id: String) -> String { fs.path(of: id) }
}
