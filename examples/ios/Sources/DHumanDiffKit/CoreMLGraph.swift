// One bundle component on Core ML, the twin of dhumandiff/runtimes/adapters/coreml.py: its .mlpackage
// (compiled once on the device and cached) or a precompiled .mlmodelc, run chunk after chunk (a UNet over 1 GB
// ships as two mlpackages; each chunk reads what it declares from the inputs and the earlier chunks' outputs).
// Inputs are cast to the type each model declares (int32 ids, float32 tensors).

#if canImport(CoreML)
import CoreML
import Foundation

public enum GraphError: Error, CustomStringConvertible {
    case missingInput(component: String, input: String)
    case missingOutput(component: String, output: String)
    case unsupportedType(component: String, input: String)
    case compileFailed(String, String)

    public var description: String {
        switch self {
        case let .missingInput(c, i):
            return "\(c) takes input \(i) that neither bundle.json nor an earlier chunk provides; re-export the bundle"
        case let .missingOutput(c, o):
            return "\(c) did not return \(o); re-export the bundle"
        case let .unsupportedType(c, i):
            return "\(c) declares input \(i) with a type this sample does not feed (float32, double, int32 only)"
        case let .compileFailed(file, why):
            return "Core ML cannot compile \(file) (\(why)); re-export the bundle"
        }
    }
}

public final class CoreMLGraph {
    public let name: String
    let models: [MLModel]

    public init(name: String, manifest: BundleManifest, configuration: MLModelConfiguration) throws {
        guard let entry = manifest.components[name] else {
            throw BundleError.invalid("bundle.json has no \(name) component; re-export the bundle")
        }
        self.name = name
        models = try entry.chunkFiles.map { rel in
            let url = try CoreMLGraph.compiled(manifest.url(rel), entry: entry, relative: rel)
            return try MLModel(contentsOf: url, configuration: configuration)
        }
    }

    /// A loadable .mlmodelc for `url`: the file itself, a precompiled sibling (`xcrun coremlcompiler compile
    /// X.mlpackage .` next to the bundle), or the package compiled on this device and cached under Caches/,
    /// keyed by the package's sha256 entries in bundle.json (a re-exported bundle recompiles).
    static func compiled(_ url: URL, entry: ComponentEntry, relative: String) throws -> URL {
        if url.pathExtension == "mlmodelc" { return url }
        let sibling = url.deletingPathExtension().appendingPathExtension("mlmodelc")
        if FileManager.default.fileExists(atPath: sibling.path) { return sibling }
        let digests = entry.sha256.filter { $0.key.hasPrefix(relative + "/") }.sorted { $0.key < $1.key }
        let key = fnv1a(digests.map { $0.key + ":" + $0.value }.joined(separator: ","))
        let caches = try FileManager.default.url(for: .cachesDirectory, in: .userDomainMask, appropriateFor: nil,
                                                 create: true)
        let target = caches.appendingPathComponent("dhumandiff/\(key)/\(url.deletingPathExtension().lastPathComponent).mlmodelc")
        if FileManager.default.fileExists(atPath: target.path) { return target }
        do {
            let temporary = try MLModel.compileModel(at: url)
            try FileManager.default.createDirectory(at: target.deletingLastPathComponent(),
                                                    withIntermediateDirectories: true)
            try FileManager.default.moveItem(at: temporary, to: target)
        } catch {
            throw GraphError.compileFailed(url.lastPathComponent, "\(error)")
        }
        return target
    }

    /// FNV-1a 64 as hex: a stable cache key (Swift's hashValue changes from run to run).
    static func fnv1a(_ text: String) -> String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in text.utf8 {
            h ^= UInt64(b)
            h = h &* 0x0000_0100_0000_01b3
        }
        return String(h, radix: 16)
    }

    /// Runs every chunk; returns the last chunk's outputs.
    public func run(_ inputs: [String: Tensor]) throws -> [String: Tensor] {
        var values = inputs
        var out: [String: Tensor] = [:]
        for model in models {
            var feed: [String: MLFeatureValue] = [:]
            for (key, desc) in model.modelDescription.inputDescriptionsByName {
                guard let t = values[key] else { throw GraphError.missingInput(component: name, input: key) }
                let type = desc.multiArrayConstraint?.dataType ?? .float32
                feed[key] = MLFeatureValue(multiArray: try CoreMLGraph.multiArray(t, type: type, component: name, input: key))
            }
            let result = try model.prediction(from: MLDictionaryFeatureProvider(dictionary: feed))
            out = [:]
            for key in result.featureNames {
                if let a = result.featureValue(for: key)?.multiArrayValue {
                    out[key] = CoreMLGraph.tensor(a)
                    values[key] = out[key]
                }
            }
        }
        return out
    }

    static func multiArray(_ t: Tensor, type: MLMultiArrayDataType, component: String, input: String) throws
        -> MLMultiArray {
        let a = try MLMultiArray(shape: t.shape.map { NSNumber(value: $0) }, dataType: type)
        let n = t.values.count
        // a freshly allocated MLMultiArray is contiguous, row-major
        switch type {
        case .float32:
            let p = a.dataPointer.bindMemory(to: Float.self, capacity: n)
            for i in 0..<n { p[i] = t.values[i] }
        case .double:
            let p = a.dataPointer.bindMemory(to: Double.self, capacity: n)
            for i in 0..<n { p[i] = Double(t.values[i]) }
        case .int32:
            let p = a.dataPointer.bindMemory(to: Int32.self, capacity: n)
            for i in 0..<n { p[i] = Int32(t.values[i].rounded()) }
        default:
            throw GraphError.unsupportedType(component: component, input: input)
        }
        return a
    }

    /// Any output array (any strides, float32 / double / other) as a row-major float tensor.
    static func tensor(_ a: MLMultiArray) -> Tensor {
        let shape = a.shape.map(\.intValue)
        let strides = a.strides.map(\.intValue)
        let n = shape.reduce(1, *)
        var out = [Float](repeating: 0, count: n)
        var index = [Int](repeating: 0, count: shape.count)
        for i in 0..<n {
            var offset = 0
            for d in 0..<shape.count { offset += index[d] * strides[d] }
            switch a.dataType {
            case .float32: out[i] = a.dataPointer.assumingMemoryBound(to: Float.self)[offset]
            case .double: out[i] = Float(a.dataPointer.assumingMemoryBound(to: Double.self)[offset])
            default: out[i] = a[index.map { NSNumber(value: $0) }].floatValue
            }
            var d = shape.count - 1
            while d >= 0 {
                index[d] += 1
                if index[d] < shape[d] { break }
                index[d] = 0
                d -= 1
            }
        }
        return Tensor(shape: shape, values: out)
    }
}

extension Dictionary where Key == String, Value == Tensor {
    func require(_ name: String, from component: String) throws -> Tensor {
        guard let t = self[name] else { throw GraphError.missingOutput(component: component, output: name) }
        return t
    }
}
#endif
