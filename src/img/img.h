/* Images: decoding camera frames and map tiles into packed 8-bit RGB. */
#ifndef GL_IMG_IMG_H
#define GL_IMG_IMG_H

#include <stddef.h>
#include <stdint.h>

enum gl_img_format {
  GL_IMG_AUTO = 0, /* detect JPEG or PNG from the magic bytes */
  GL_IMG_JPEG = 1,
  GL_IMG_PNG = 2,
  GL_IMG_RGB8 = 3, /* raw packed RGB rows: width and height must be given */
};

/* Packed RGB8 pixels, rows of width*3 bytes, top row first. */
struct gl_image {
  uint8_t *rgb;
  uint32_t width, height;
};

/* Decodes bytes of the given format into *out (free with gl_img_free).
 * Images with more than max_pixels pixels (width*height) are refused before
 * their pixels are decoded (decompression bombs). For GL_IMG_RGB8, width and
 * height give the size and len must equal width*height*3. JPEG is decoded by
 * libjpeg-turbo in accurate-DCT mode. Returns 0, GL_EFORMAT for bytes that are
 * not a valid image of that format (err says why), GL_ETOOBIG, GL_ENOMEM. */
int gl_img_decode(const uint8_t *data, size_t len, enum gl_img_format fmt, uint32_t width,
                  uint32_t height, uint64_t max_pixels, struct gl_image *out, char *err,
                  size_t errlen);

/* Reads and decodes a JPEG or PNG file. */
int gl_img_load(const char *path, uint64_t max_pixels, struct gl_image *out, char *err,
                size_t errlen);

void gl_img_free(struct gl_image *img);

/* Resamples src into the out_w x out_h RGB8 image out, turned north-up for a
 * frame whose top looks towards heading_deg (degrees clockwise from north):
 * the whole frame is stretched onto the output as the network's resize
 * does, then rotated about the centre; coordinates that fall outside the
 * frame are reflected back into it (no constant fill); a frame larger than
 * the output is antialiased with up to 4 x 4 samples a pixel. The exact
 * formulas are step 1 of src/loc/fine.h. Allocates nothing. */
void gl_img_warp(const struct gl_image *src, double heading_deg, uint32_t out_w, uint32_t out_h,
                 uint8_t *out);

/* Turns src upright by its EXIF/TIFF orientation (1-8: 1 upright, 3 upside
 * down, 6 and 8 turned a quarter, 2, 4, 5 and 7 mirrored; anything else is
 * taken as 1) into dst, whose rgb the caller provides with room for
 * width * height * 3 bytes; sets dst's size (swapped for 5-8). */
void gl_img_orient(const struct gl_image *src, unsigned orientation, struct gl_image *dst);

/* Applies an EXIF orientation (2-8) to a JPEG losslessly (TurboJPEG's
 * transforms, no re-encoding): *out (free with free()) is a JPEG without
 * metadata whose pixels are the upright image. Partial MCU blocks at the
 * edges that a transform would move are trimmed (less than 16 pixels of a
 * side). Returns 0, GL_EINVAL (orientation not 2-8), GL_EFORMAT or
 * GL_ENOMEM. */
int gl_img_jpeg_orient(const uint8_t *data, size_t len, unsigned orientation, uint8_t **out,
                       size_t *out_len, char *err, size_t errlen);

#endif
