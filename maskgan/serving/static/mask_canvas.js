// The paintable mask: a class-id buffer (the truth) drawn onto a canvas at the mask's native size.
//
// The server maps colours to classes exactly, so nothing here may blend colours: brush stamps set whole
// pixels to a palette colour (no canvas paths, no antialiasing), the canvas is scaled by CSS with
// `image-rendering: pixelated`, and masks are uploaded as PNGs written from the id buffer.

const HISTORY_LIMIT = 50; // undo steps kept; 50 x 512 x 512 bytes = 13 MB at most

// Eraser rule: a pixel whose ORIGINAL class is part of the face becomes skin, any other pixel background.
// Face = skin, nose, glasses, eyes, brows, ears, mouth, lips (ids 1..12 in the dataset order); hair, hat,
// earrings, necklace, neck and cloth are not face, so erasing them leaves background.
const SKIN = 1;
const BACKGROUND = 0;
const FACE_IDS = new Set([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
export const ERASER = -1;

export class MaskCanvas {
  /** canvas: the visible <canvas>; palette: [[r, g, b], ...] indexed by class id. */
  constructor(canvas, palette) {
    this.canvas = canvas;
    this.context = canvas.getContext("2d", { willReadFrequently: false });
    this.context.imageSmoothingEnabled = false;
    this.palette = palette;
    this.width = 0;
    this.height = 0;
    this.original = null; // Uint8Array (H * W) class ids as loaded (parsed or the sample's mask)
    this.labels = null; // Uint8Array (H * W) class ids being edited
    this.undoStack = [];
    this.redoStack = [];
    this.stroke = null; // {classId, x, y} while a stroke runs
    this.onchange = () => {};
  }

  get loaded() {
    return this.labels !== null;
  }

  get canUndo() {
    return this.undoStack.length > 0;
  }

  get canRedo() {
    return this.redoStack.length > 0;
  }

  /** True when the edited mask differs from the loaded one. */
  get edited() {
    if (!this.loaded) return false;
    for (let i = 0; i < this.labels.length; i++) if (this.labels[i] !== this.original[i]) return true;
    return false;
  }

  /** Start over with (H * W) class ids; clears the history. */
  load(labels, width, height) {
    this.width = width;
    this.height = height;
    this.canvas.width = width;
    this.canvas.height = height;
    this.context.imageSmoothingEnabled = false;
    this.original = labels;
    this.labels = labels.slice();
    this.undoStack = [];
    this.redoStack = [];
    this.image = this.context.createImageData(width, height);
    this.render();
    this.onchange();
  }

  /** RGBA pixels (e.g. a decoded mask PNG) -> class ids; each pixel takes the nearest palette colour. */
  labelsFromPixels(data) {
    const count = data.length / 4;
    const labels = new Uint8Array(count);
    const exact = new Map(this.palette.map(([r, g, b], id) => [(r << 16) | (g << 8) | b, id]));
    for (let i = 0; i < count; i++) {
      const r = data[4 * i], g = data[4 * i + 1], b = data[4 * i + 2];
      let id = exact.get((r << 16) | (g << 8) | b);
      if (id === undefined) id = this.nearest(r, g, b);
      labels[i] = id;
    }
    return labels;
  }

  nearest(r, g, b) {
    let best = 0, bestDistance = Infinity;
    this.palette.forEach(([pr, pg, pb], id) => {
      const distance = Math.max(Math.abs(r - pr), Math.abs(g - pg), Math.abs(b - pb));
      if (distance < bestDistance) [best, bestDistance] = [id, distance];
    });
    return best;
  }

  /** Draw ids into the canvas, all of it or the rectangle [x0, x1) x [y0, y1). */
  render(x0 = 0, y0 = 0, x1 = this.width, y1 = this.height) {
    const data = this.image.data;
    for (let y = y0; y < y1; y++) {
      for (let x = x0; x < x1; x++) {
        const i = y * this.width + x;
        const [r, g, b] = this.palette[this.labels[i]];
        data[4 * i] = r;
        data[4 * i + 1] = g;
        data[4 * i + 2] = b;
        data[4 * i + 3] = 255;
      }
    }
    if (x1 > x0 && y1 > y0) this.context.putImageData(this.image, 0, 0, x0, y0, x1 - x0, y1 - y0);
  }

  /** Begin a stroke at mask coordinates (x, y) (floats, pixel units); classId or ERASER. */
  beginStroke(x, y, classId, size) {
    if (!this.loaded) return;
    this.undoStack.push(this.labels.slice());
    if (this.undoStack.length > HISTORY_LIMIT) this.undoStack.shift();
    this.redoStack = [];
    this.stroke = { classId, size, x, y };
    this.stamp(x, y);
    this.onchange();
  }

  /** Continue the stroke to (x, y): stamps every half radius along the segment so fast moves leave no gaps. */
  strokeTo(x, y) {
    const stroke = this.stroke;
    if (!stroke) return;
    const step = Math.max(0.5, stroke.size / 4);
    const distance = Math.hypot(x - stroke.x, y - stroke.y);
    const count = Math.max(1, Math.ceil(distance / step));
    for (let k = 1; k <= count; k++) {
      this.stamp(stroke.x + ((x - stroke.x) * k) / count, stroke.y + ((y - stroke.y) * k) / count);
    }
    stroke.x = x;
    stroke.y = y;
  }

  endStroke() {
    if (!this.stroke) return;
    this.stroke = null;
    this.onchange();
  }

  /** A filled disc of the stroke's diameter centred at (cx, cy): whole pixels, palette colours only. */
  stamp(cx, cy) {
    const { classId, size } = this.stroke;
    const radius = size / 2;
    const x0 = Math.max(0, Math.floor(cx - radius));
    const y0 = Math.max(0, Math.floor(cy - radius));
    const x1 = Math.min(this.width, Math.ceil(cx + radius));
    const y1 = Math.min(this.height, Math.ceil(cy + radius));
    for (let y = y0; y < y1; y++) {
      for (let x = x0; x < x1; x++) {
        const dx = x + 0.5 - cx, dy = y + 0.5 - cy;
        if (dx * dx + dy * dy <= radius * radius) this.paint(y * this.width + x, classId);
      }
    }
    // The pixel under the pointer is always painted, so a 1 px brush paints.
    const px = Math.floor(cx), py = Math.floor(cy);
    if (px >= 0 && py >= 0 && px < this.width && py < this.height) this.paint(py * this.width + px, classId);
    this.render(x0, y0, Math.max(x1, px + 1), Math.max(y1, py + 1));
  }

  paint(index, classId) {
    if (classId === ERASER) classId = FACE_IDS.has(this.original[index]) ? SKIN : BACKGROUND;
    this.labels[index] = classId;
  }

  undo() {
    if (!this.canUndo) return;
    this.redoStack.push(this.labels);
    this.labels = this.undoStack.pop();
    this.render();
    this.onchange();
  }

  redo() {
    if (!this.canRedo) return;
    this.undoStack.push(this.labels);
    this.labels = this.redoStack.pop();
    this.render();
    this.onchange();
  }

  /** Back to the loaded mask (undoable). */
  reset() {
    if (!this.edited) return;
    this.undoStack.push(this.labels);
    this.redoStack = [];
    this.labels = this.original.slice();
    this.render();
    this.onchange();
  }

  /** PNG of ids in the palette's colours (lossless, opaque: exactly the palette). */
  toBlob(labels = this.labels) {
    const canvas = document.createElement("canvas");
    canvas.width = this.width;
    canvas.height = this.height;
    const context = canvas.getContext("2d");
    const image = context.createImageData(this.width, this.height);
    for (let i = 0; i < labels.length; i++) {
      const [r, g, b] = this.palette[labels[i]];
      image.data.set([r, g, b, 255], 4 * i);
    }
    context.putImageData(image, 0, 0);
    return new Promise((resolve, reject) =>
      canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("could not encode the mask"))), "image/png"),
    );
  }
}
