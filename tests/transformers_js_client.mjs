// A transformers.js user of a `samclip export --onnx` folder, offline (driven by tests/test_onnx_transformers_js.py):
//   node transformers_js_client.mjs REQUEST.json RESULT.json
// REQUEST: {install_dir, folder, image, point: [x, y], box: [x1, y1, x2, y2], clip_image, labels, template, dtype}.
// Loads SAM as SamModel + AutoProcessor and the CLIP path as CLIPTextModelWithProjection +
// CLIPVisionModelWithProjection, the way transformers.js's docs load SAM and CLIP, and writes their answers as JSON.
import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

const request = JSON.parse(readFileSync(process.argv[2], 'utf8'));
// The package lives in the test's npm cache, not beside this file: resolve it from there.
const require = createRequire(join(request.install_dir, 'package.json'));
const {
    env, AutoProcessor, AutoTokenizer, CLIPImageProcessor, CLIPTextModelWithProjection,
    CLIPVisionModelWithProjection, RawImage, SamModel, softmax,
} = require('@huggingface/transformers');

env.allowRemoteModels = false;
env.allowLocalModels = true;
env.localModelPath = dirname(request.folder);
const options = { dtype: request.dtype, local_files_only: true };

const flat = (tensor) => Array.from(tensor.data, Number);

async function segment(model, processor, image, prompt) {
    const inputs = await processor(image, prompt);
    const outputs = await model(inputs);
    const [masks] = await processor.post_process_masks(outputs.pred_masks, inputs.original_sizes, inputs.reshaped_input_sizes);
    return { iou_scores: flat(outputs.iou_scores), masks: flat(masks), masks_shape: masks.dims };
}

const model = await SamModel.from_pretrained(request.folder, options);
const processor = await AutoProcessor.from_pretrained(request.folder, options);
const image = await RawImage.read(request.image);
const point = await segment(model, processor, image, { input_points: [[request.point]] });
// A box as its two corners, labelled 2 / 3: transformers.js feeds the decoder only input_points and input_labels.
const [x1, y1, x2, y2] = request.box;
const box = await segment(model, processor, image, { input_points: [[[x1, y1], [x2, y2]]], input_labels: [[2, 3]] });

const onnxConfig = JSON.parse(readFileSync(join(request.folder, 'onnx', 'samclip_onnx.json'), 'utf8'));
const tokenizer = await AutoTokenizer.from_pretrained(request.folder, options);
const textModel = await CLIPTextModelWithProjection.from_pretrained(request.folder, options);
const visionModel = await CLIPVisionModelWithProjection.from_pretrained(request.folder, options);
const clipProcessor = new CLIPImageProcessor(onnxConfig.clip_image_processor);
const texts = request.labels.map((label) => request.template.replace('{}', label));
const { text_embeds } = await textModel(tokenizer(texts, { padding: true, truncation: true }));
const { image_embeds } = await visionModel(await clipProcessor(await RawImage.read(request.clip_image)));
// Both embeddings are L2-normalised: the logits are the scaled cosine similarities.
const imageEmbedding = flat(image_embeds);
const textEmbeddings = flat(text_embeds);
const dim = imageEmbedding.length;
const logits = texts.map((_, t) =>
    onnxConfig.logit_scale * imageEmbedding.reduce((sum, x, d) => sum + x * textEmbeddings[t * dim + d], 0));

writeFileSync(process.argv[3], JSON.stringify({
    point, box, probabilities: softmax(logits), processor_class: processor.constructor.name,
    sessions: Object.keys(model.sessions),
}));
