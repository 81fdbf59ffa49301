import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The `sandboxd` and `sbx` binaries under test: `$SBX_E2E_BIN_DIR`, else beside the test bundle
/// (`swift build --build-tests` builds them into the same directory), else the usual build
/// directories of this checkout. nil when none holds both.
public enum BuiltBinaries {
    public static let directory: String? = {
        var candidates: [String] = []
        if let dir = ProcessInfo.processInfo.environment["SBX_E2E_BIN_DIR"] { candidates.append(dir) }
        if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            candidates.append((exe as NSString).deletingLastPathComponent)
        }
        for bundle in Bundle.allBundles { candidates.append((bundle.bundlePath as NSString).deletingLastPathComponent) }
        let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        for scratch in [".build", ".build-d"] { candidates.append(repo + "/" + scratch + "/debug") }
        return candidates.first { access($0 + "/sandboxd", X_OK) == 0 && access($0 + "/sbx", X_OK) == 0 }
    }()
    public static var sandboxd: String { (directory ?? "/nonexistent") + "/sandboxd" }
    public static var sbx: String { (directory ?? "/nonexistent") + "/sbx" }
}
