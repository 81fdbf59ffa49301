import SBXJSON
import XCTest
@testable import BranchFS

/// The commit journal's encoding of the small files it carries (see `InlineFile`): what a
/// replay reads back must be byte for byte what the commit read.
final class JournalFormatTests: XCTestCase {
    func testBase64RoundTripsEveryLengthAndEveryByteValue() {
        let all = (0...255).map { UInt8($0) }
        for n in 0...all.count {
            let bytes = Array(all.prefix(n))
            XCTAssertEqual(Base64.decode(Base64.encode(bytes)), bytes, "\(n) bytes")
        }
        XCTAssertEqual(Base64.encode(Array("foobar".utf8)), "Zm9vYmFy")
        XCTAssertEqual(Base64.encode(Array("fooba".utf8)), "Zm9vYmE=")
        XCTAssertEqual(Base64.encode(Array("foob".utf8)), "Zm9vYg==")
    }

    func testBase64RefusesWhatItDidNotWrite() {
        for text in ["Zm9", "Zm9v!mFy", "Zm===", "=Zm9", "Zg==Zg=="] {
            XCTAssertNil(Base64.decode(text), text)
        }
    }

    func testAnInlineFileSurvivesTheJournalsJSON() throws {
        let file = InlineFile(mode: 0o4755, uid: 1000, gid: 65534, atime: [1, 2], mtime: [1_500_000_000, 999_999_999],
                              data: [0, 0xff, 10, 13, 0x22, 0x5c])
        var text = Array(file.json.text.utf8)
        XCTAssertEqual(InlineFile(json: try JSON.parse(bytes: &text)), file)
        XCTAssertNil(InlineFile(json: .object([("mode", .int(0o644))])), "a record missing its data is refused")
    }
}
