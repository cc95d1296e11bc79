"""Prune a YOLO detector: Lottery Ticket with late rewinding (--lth) or Continuous Sparsification (--cs).

    python prune.py --lth                                         # yolov3-tiny on shapes, params/IMP.yaml
    python prune.py --lth --scope global --rounds 10 --prune-rate 0.2 --rewind-epoch 2 --epochs 20
    python prune.py --lth --weights runs/prune/exp/round_0/weights/last.pt --scope local   # reuse a dense run
    python prune.py --lth --weights runs/prune/exp/round_10/weights/last.pt --rounds 3     # prune further
    python prune.py --cs                                          # yolov3-tiny on shapes, params/CS.yaml
    python prune.py --cs --rounds 3 --epochs 10 --rewind-epoch 2 --ticket-epochs 30 --cs-lambda 1e-8
    python prune.py --resume runs/prune/exp                       # continue at the round and epoch where it stopped

Writes runs/prune/<name>/: args.yaml, round_<r>/ (a training run each: weights/last.pt and best.pt with the
``masks`` and ``rewind`` entries, results.csv, masks.txt), rounds.csv and rounds.png. With --lth, round 0 is the
dense network (trained here, or the ``--weights`` checkpoint when it holds a ``rewind`` entry). With --cs, rounds
0 .. R-1 are search rounds (soft masks; results.csv logs beta and the soft and hard sparsity per epoch) and round R
retrains the ticket. ``--params`` defaults to params/IMP.yaml for --lth and params/CS.yaml for --cs. The techniques
live in utils/pruning.py (``LotteryTicket``) and utils/cs.py (``ContinuousSparsification``); another technique is
one more ``Strategy`` subclass in ``STRATEGIES``.
"""
from utils.errors import UserError, cli
from utils.general import ROOT
from utils.my_utils import parse_args, prune_parser, resume_args, typed_dests
import utils.cs  # noqa: F401  (registers STRATEGIES["cs"])
from utils.pruning import STRATEGIES, PruneRun, run_rounds

PARAMS = {"lth": ROOT / "params" / "IMP.yaml", "cs": ROOT / "params" / "CS.yaml"}


def method_of(args):
    return "lth" if args.lth else "cs" if args.cs else None


def main(argv=None):
    parser = prune_parser()
    first, _ = parser.parse_known_args(argv)
    if first.resume:
        run = PruneRun.find(first.resume, first.project)
        run.claim()  # a run still going is refused before anything is read into this one
        args = resume_args(run.load_args(), first, typed_dests(parser, argv))
    else:
        method = method_of(first)
        if method is None:
            raise UserError("choose a technique: --lth (Lottery Ticket) or --cs (Continuous Sparsification)")
        if method not in STRATEGIES:
            raise UserError(f"--{method} is not implemented yet")
        if first.params is None:
            parser.set_defaults(params=str(PARAMS[method]))
        args = parse_args(parser, argv)
        run = None
    strategy = STRATEGIES[method_of(args)](args, run)  # checks the arguments before a run folder is created
    if run is None:
        run = strategy.run = PruneRun.create(args)
    final = run_rounds(strategy)
    if strategy.main:
        print(f"results saved to {run.path} (rounds.csv, rounds.png, round_*/); final network: {final}")
    return run.path


if __name__ == "__main__":
    cli(main)
