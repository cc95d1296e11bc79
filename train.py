"""Train a YOLO detector described by a Darknet cfg.

    python train.py                                   # yolov3-tiny on the embedded shapes set (~10 min on a CPU)
    python train.py --cfg cfg/yolov3.cfg --data data/coco2017.data --img-size 416 --epochs 300 --device 0
    torchrun --nproc_per_node 4 train.py --cfg cfg/yolov3-spp.cfg --data data/voc.data --sync-bn
    python train.py --resume                          # continue the most recent run where it stopped
"""
from utils import engine
from utils.errors import cli
from utils.my_utils import parse_args, train_parser


def main(argv=None):
    args = parse_args(train_parser(), argv)
    args, model, save_dir, resume = engine.prepare(args)
    trainer = engine.Trainer(args, model, save_dir, resume_ckpt=resume)
    trainer.fit()
    if trainer.main:
        print(f"results saved to {save_dir} (best.pt, last.pt, results.csv, results.png)")
    return save_dir


if __name__ == "__main__":
    cli(main)
