// npm run image: build (or find cached) the guest kernel + initramfs images and print their paths.
import { ensureImage } from './build.js';
import { KumoError } from '../../protocol/errors.js';

try {
  const paths = await ensureImage();
  process.stdout.write(JSON.stringify(paths, null, 2) + '\n');
} catch (e) {
  const ctx = e instanceof KumoError ? ` ${JSON.stringify(e.context)}` : '';
  process.stderr.write(`image build failed: ${(e as Error).message}${ctx}\n`);
  process.exit(1);
}
