import SBXJSON
import XCTest
@testable import Sandbox

final class ProfileTests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        dir = "/tmp/sbx-profile-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: dir)
    }

    private var repoProfiles: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("profiles").path
    }

    private func write(_ name: String, _ text: String) -> String {
        let path = dir + "/" + name
        FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
        return path
    }

    private func loadError(_ text: String) -> SandboxError? {
        let path = write("p.json", text)
        do {
            _ = try ProfileLoader.load(path)
            return nil
        } catch {
            return error
        }
    }

    func testShippedProfilesLoadWithTheDocumentedDefaults() throws {
        let d = try ProfileLoader.load(repoProfiles + "/default.json")
        XCTAssertEqual(d.network, .none)
        XCTAssertEqual(d.workspace, .readWrite)
        XCTAssertEqual(d.limits.timeoutSeconds, 120)
        XCTAssertEqual(d.limits.memoryBytes, 2 << 30)
        XCTAssertEqual(d.limits.pids, 512)
        XCTAssertEqual(d.limits.nofile, 4096)
        XCTAssertEqual(d.limits.tmpBytes, 1 << 30)
        XCTAssertEqual(d.limits.maxOutputBytes, 30_000)
        XCTAssertFalse(d.etc.contains("shadow"))

        let ro = try ProfileLoader.load(repoProfiles + "/readonly.json")
        XCTAssertEqual(ro.workspace, .readOnly)
        XCTAssertEqual(ro.limits, d.limits, "readonly changes only the workspace")

        let build = try ProfileLoader.load(repoProfiles + "/build.json")
        XCTAssertGreaterThan(build.limits.memoryBytes!, d.limits.memoryBytes!)
        XCTAssertGreaterThan(build.limits.pids!, d.limits.pids!)
        XCTAssertGreaterThan(build.limits.timeoutSeconds, d.limits.timeoutSeconds)
        XCTAssertEqual(build.env, d.env, "extends merges objects key by key")

        let net = try ProfileLoader.load(repoProfiles + "/network.json")
        XCTAssertEqual(net.network, .host)
        XCTAssertTrue(net.etc.contains("resolv.conf"))
    }

    func testMalformedJSONNamesTheFileAndLine() {
        let error = loadError("{\n  \"network\": \"none\",\n  oops\n}")
        guard case let .invalidProfile(file, field, expected)? = error else { return XCTFail("\(String(describing: error))") }
        XCTAssertTrue(file.hasSuffix("p.json"))
        XCTAssertEqual(field, "(document)")
        XCTAssertTrue(expected.contains("line 3"), expected)
    }

    func testUnknownFieldIsAnErrorNotIgnored() {
        let error = loadError(#"{"netwrok": "host"}"#)
        guard case let .invalidProfile(_, field, _)? = error else { return XCTFail("\(String(describing: error))") }
        XCTAssertEqual(field, "netwrok")
    }

    func testWrongTypeNamesFieldAndExpectation() {
        let error = loadError(#"{"limits": {"memory_bytes": "lots"}}"#)
        guard case let .invalidProfile(_, field, expected)? = error else { return XCTFail("\(String(describing: error))") }
        XCTAssertEqual(field, "limits.memory_bytes")
        XCTAssertTrue(expected.contains("size"), expected)
        XCTAssertTrue(expected.contains("\"lots\""), expected)
    }

    func testImpossibleValuesAreRejected() {
        for text in [#"{"network": "wifi"}"#, #"{"limits": {"timeout_seconds": -1}}"#, #"{"limits": {"pids": 0}}"#,
                     #"{"limits": {"memory_bytes": 1000}}"#, #"{"host_user": {"uid": 0}}"#, #"{"etc": ["../shadow"]}"#,
                     #"{"env": {"1BAD": "x"}}"#, #"{"mounts": [{"source": "relative"}]}"#] {
            XCTAssertNotNil(loadError(text), text)
        }
    }

    func testExtendsCycleIsReported() {
        _ = write("a.json", #"{"extends": "b.json"}"#)
        _ = write("b.json", #"{"extends": "a.json"}"#)
        XCTAssertThrowsError(try ProfileLoader.load(dir + "/a.json")) { error in
            guard case .invalidProfile(_, "extends", _) = error as? SandboxError else { return XCTFail("\(error)") }
        }
    }

    func testUnknownProfileNameListsWhereItLooked() {
        XCTAssertThrowsError(try ProfileLoader.load("no-such-profile-\(getpid())")) { error in
            guard case let .unknownProfile(_, searched) = error as? SandboxError else { return XCTFail("\(error)") }
            XCTAssertFalse(searched.isEmpty)
        }
    }

    func testSizesAcceptBinaryUnits() {
        XCTAssertEqual(parseSize("4096"), 4096)
        XCTAssertEqual(parseSize("512K"), 512 << 10)
        XCTAssertEqual(parseSize("64M"), 64 << 20)
        XCTAssertEqual(parseSize("2G"), 2 << 30)
        XCTAssertEqual(parseSize("1GiB"), 1 << 30)
        XCTAssertEqual(parseSize("1.5G"), 3 << 29)
        XCTAssertNil(parseSize("3x"))
        XCTAssertNil(parseSize("-1"))
        XCTAssertNil(parseSize(""))
    }
}
