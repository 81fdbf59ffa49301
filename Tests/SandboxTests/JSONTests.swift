import SBXJSON
import XCTest

final class JSONTests: XCTestCase {
    func testRoundTripKeepsValuesAndKeyOrder() throws {
        let text = #"{"b":1,"a":[true,false,null,-2.5,"x\"y\\z\n"],"c":{"d":"é€😀"}}"#
        let value = try JSON.parse(text)
        XCTAssertEqual(value.text, text)
        XCTAssertEqual(value["c"]?["d"]?.stringValue, "é€😀")
    }

    func testEscapesAndSurrogatesDecode() throws {
        XCTAssertEqual(try JSON.parse(#""\u00e9\ud83d\ude00\t""#).stringValue, "é😀\t")
    }

    func testControlCharactersAreEscapedOnOutput() {
        XCTAssertEqual(JSON.string("a\u{1}b\u{7f}").text, #""a\u0001b\u007f""#)
    }

    func testInvalidDocumentsAreRejectedWithALine() {
        for bad in ["", "{", "[1,]", "{\"a\" 1}", "tru", "\"\\x\"", "01x", "{}{}", "\"\u{1}\""] {
            XCTAssertThrowsError(try JSON.parse(bad), bad)
        }
        do {
            _ = try JSON.parse("[\n1,\n?]")
            XCTFail()
        } catch {
            XCTAssertEqual(error.line, 3)
        }
    }

    func testDeepNestingIsRefusedNotACrash() {
        let deep = String(repeating: "[", count: 100_000)
        XCTAssertThrowsError(try JSON.parse(deep))
    }
}
