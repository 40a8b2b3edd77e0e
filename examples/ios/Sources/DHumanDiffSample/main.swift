// dhumandiff-sample: the command-line face of DHumanDiffKit on macOS (the library is what an iOS app embeds).
//
//   swift run -c release dhumandiff-sample --bundle B --face-a A.png --face-b B.png \
//       --prompt "a man and a woman on the beach" --out portrait.png [--steps 4] [--sampler lcm|tcd] [--seed 0]
//       [--compute-units all|cpu|gpu|ane] [--reduce-memory] [--detect-faces] [--person-words man,woman]
//
// Exit codes follow the Python CLI where they overlap: 1 usage, 3 unreadable photo, 6 prompt, 10 bundle.

import Foundation

#if canImport(CoreML) && canImport(CoreGraphics) && canImport(ImageIO) && canImport(Vision)
import CoreML
import DHumanDiffKit

func fail(_ message: String, _ code: Int32) -> Never {
    FileHandle.standardError.write(("error: " + message + "\n").data(using: .utf8)!)
    exit(code)
}

var args: [String: String] = [:]
var flags = Set<String>()
var it = CommandLine.arguments.dropFirst().makeIterator()
while let a = it.next() {
    guard a.hasPrefix("--") else { fail("unexpected argument \(a)", 1) }
    if ["--reduce-memory", "--detect-faces"].contains(a) {
        flags.insert(a)
    } else if let v = it.next() {
        args[a] = v
    } else {
        fail("\(a) needs a value", 1)
    }
}
for required in ["--bundle", "--face-a", "--face-b", "--prompt"] where args[required] == nil {
    fail("missing \(required); usage: dhumandiff-sample --bundle B --face-a A.png --face-b B.png --prompt TEXT", 1)
}
let units: [String: MLComputeUnits] = ["all": .all, "cpu": .cpuOnly, "gpu": .cpuAndGPU, "ane": .cpuAndNeuralEngine]
guard let computeUnits = units[args["--compute-units"] ?? "ane"] else { fail("--compute-units: all, cpu, gpu or ane", 1) }

var options = GenerationOptions()
options.steps = args["--steps"].flatMap(Int.init)
options.sampler = args["--sampler"]
options.seed = args["--seed"].flatMap(UInt64.init) ?? 0
options.detectFaces = flags.contains("--detect-faces")
if let words = args["--person-words"] {
    let parts = words.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
    guard parts.count == 2 else { fail("--person-words needs two comma-separated words, e.g. man,woman", 6) }
    options.personWords = (parts[0], parts[1])
}

do {
    let start = Date()
    let pipeline = try DHumanDiffPipeline(bundle: URL(fileURLWithPath: args["--bundle"]!), computeUnits: computeUnits,
                                          reduceMemory: flags.contains("--reduce-memory"))
    let faceA = try Images.load(URL(fileURLWithPath: args["--face-a"]!))
    let faceB = try Images.load(URL(fileURLWithPath: args["--face-b"]!))
    let image = try pipeline.generate(faceA: faceA, faceB: faceB, prompt: args["--prompt"]!, options: options) { i, n in
        FileHandle.standardError.write("step \(i)/\(n)\n".data(using: .utf8)!)
    }
    let out = URL(fileURLWithPath: args["--out"] ?? "portrait.png")
    try Images.writePNG(image, to: out)
    print(String(format: "wrote %@ in %.1f s", out.path, Date().timeIntervalSince(start)))
} catch let e as PromptError {
    fail(e.description, 6)
} catch let e as ImageError {
    fail(e.description, 3)
} catch let e as BundleError {
    fail(e.description, 10)
} catch let e as SamplerError {
    fail(e.description, 1)
} catch {
    fail("\(error)", 1)
}
#else
FileHandle.standardError.write("dhumandiff-sample runs Core ML: build and run it on macOS 14+ (or embed DHumanDiffKit in an iOS 17 app)\n".data(using: .utf8)!)
exit(1)
#endif
