// swift-tools-version:5.9
// The dhumandiff iOS / macOS sample: a Core ML bundle (`dhumandiff export coreml tiny-lcm --out B`) in,
// a PNG out. No dependencies beyond the SDK, no Xcode project: `swift build`, `swift run`, `swift test`.
import PackageDescription

let package = Package(
    name: "DHumanDiffSample",
    platforms: [.macOS(.v14), .iOS(.v17)],
    products: [
        .library(name: "DHumanDiffKit", targets: ["DHumanDiffKit"]),
        .executable(name: "dhumandiff-sample", targets: ["DHumanDiffSample"]),
    ],
    targets: [
        // Pure Swift (scheduler tables, sampler, bundle.json, tokenizer, layout) + the Core ML / CoreGraphics
        // parts behind `#if canImport(...)`, so the pure part also builds and tests on Linux.
        .target(name: "DHumanDiffKit"),
        .executableTarget(name: "DHumanDiffSample", dependencies: ["DHumanDiffKit"]),
        .testTarget(name: "DHumanDiffKitTests", dependencies: ["DHumanDiffKit"]),
    ]
)
