"""Natural-language instruction sets: several phrasings per Meta-World task and per AI2-THOR action.

The Meta-World phrasings follow the task descriptions of Yu et al. 2019 (Meta-World, appendix table);
the first phrasing of each task is its canonical one. :func:`pick_phrasing` picks one per episode seed.
"""
from __future__ import annotations

import re
from typing import Dict, List

import numpy as np

METAWORLD_INSTRUCTIONS: Dict[str, List[str]] = {
    "assembly-v3": ["pick up the nut and place it onto the peg", "put the ring nut on the peg",
                    "assemble the nut onto the peg"],
    "basketball-v3": ["dunk the basketball into the basket", "pick up the ball and put it in the hoop",
                      "score a basket with the ball"],
    "bin-picking-v3": ["move the puck from one bin to the other bin", "pick the puck out of the bin and drop it "
                       "in the other bin", "transfer the puck between the bins"],
    "box-close-v3": ["close the box with its lid", "pick up the lid and put it on the box",
                     "cover the box"],
    "button-press-topdown-v3": ["press the button from the top", "push the button down from above",
                                "press down on the top of the button"],
    "button-press-topdown-wall-v3": ["reach over the wall and press the button from the top",
                                     "press the button down from above, past the wall",
                                     "push the button behind the wall down from above"],
    "button-press-v3": ["press the button", "push the button in from the front",
                        "press the button on the box"],
    "button-press-wall-v3": ["reach past the wall and press the button", "press the button behind the wall",
                             "go around the wall and push the button"],
    "coffee-button-v3": ["push the button on the coffee machine", "press the coffee machine's button",
                         "start the coffee machine"],
    "coffee-pull-v3": ["pull the mug out from the coffee machine", "take the mug away from the coffee machine",
                       "slide the mug out of the coffee machine"],
    "coffee-push-v3": ["push the mug under the coffee machine", "slide the mug into the coffee machine",
                       "put the mug beneath the coffee spout"],
    "dial-turn-v3": ["turn the dial", "rotate the dial half a turn", "spin the dial around"],
    "disassemble-v3": ["pick the nut off the peg", "take the ring nut off the peg",
                       "remove the nut from the peg"],
    "door-close-v3": ["close the door", "swing the door shut", "push the door closed"],
    "door-lock-v3": ["lock the door", "turn the door lock clockwise", "rotate the lock to lock the door"],
    "door-open-v3": ["open the door", "pull the door open by its handle", "swing the door open"],
    "door-unlock-v3": ["unlock the door", "turn the door lock counter-clockwise",
                       "rotate the lock to unlock the door"],
    "drawer-close-v3": ["close the drawer", "push the drawer shut", "slide the drawer closed"],
    "drawer-open-v3": ["open the drawer", "pull the drawer open by its handle", "slide the drawer out"],
    "faucet-close-v3": ["close the faucet", "turn the faucet handle clockwise", "turn off the tap"],
    "faucet-open-v3": ["open the faucet", "turn the faucet handle counter-clockwise", "turn on the tap"],
    "hammer-v3": ["hammer the nail into the wall", "pick up the hammer and drive in the nail",
                  "use the hammer to knock the nail in"],
    "hand-insert-v3": ["put your hand into the hole", "insert the gripper into the hole",
                       "reach down into the hole"],
    "handle-press-side-v3": ["press the handle down from the side", "push the side handle down",
                             "push down on the handle sideways"],
    "handle-press-v3": ["press the handle down", "push the handle down", "push down on the handle"],
    "handle-pull-side-v3": ["pull the handle up from the side", "lift the side handle up",
                            "pull up on the handle sideways"],
    "handle-pull-v3": ["pull the handle up", "lift the handle up", "pull up on the handle"],
    "lever-pull-v3": ["pull the lever", "raise the lever", "swing the lever a quarter turn"],
    "peg-insert-side-v3": ["insert the peg into the hole from the side", "push the peg sideways into the hole",
                           "pick up the peg and slide it into the hole"],
    "peg-unplug-side-v3": ["unplug the peg from the side", "pull the peg sideways out of the hole",
                           "take the peg out of the hole"],
    "pick-out-of-hole-v3": ["pick the puck out of the hole", "lift the puck up out of the hole",
                            "take the puck out of the hole and bring it to the goal"],
    "pick-place-v3": ["pick up the puck and place it at the goal", "grasp the puck and put it on the target",
                      "lift the puck and move it to the goal"],
    "pick-place-wall-v3": ["pick up the puck and place it at the goal behind the wall",
                           "lift the puck over the wall to the target", "carry the puck past the wall"],
    "plate-slide-back-side-v3": ["slide the plate back out of the cabinet from the side",
                                 "pull the plate sideways out of the cabinet",
                                 "get the plate from the cabinet sideways"],
    "plate-slide-back-v3": ["slide the plate back out of the cabinet", "pull the plate out of the cabinet",
                            "get the plate from the cabinet"],
    "plate-slide-side-v3": ["slide the plate into the cabinet from the side",
                            "push the plate sideways into the cabinet", "slide the plate in sideways"],
    "plate-slide-v3": ["slide the plate into the cabinet", "push the plate into the cabinet",
                       "slide the plate forward into the goal"],
    "push-back-v3": ["push the puck back to the goal", "slide the puck backwards to the target",
                     "pull the puck back toward the goal"],
    "push-v3": ["push the puck to the goal", "slide the puck to the target", "shove the puck onto the goal"],
    "push-wall-v3": ["push the puck around the wall to the goal", "slide the puck past the wall to the target",
                     "push the puck to the goal behind the wall"],
    "reach-v3": ["reach the goal", "move your hand to the target", "put the gripper at the goal position"],
    "reach-wall-v3": ["reach over the wall to the goal", "move your hand past the wall to the target",
                      "put the gripper at the goal behind the wall"],
    "shelf-place-v3": ["place the puck on the shelf", "pick up the puck and put it on the shelf",
                       "lift the puck onto the shelf"],
    "soccer-v3": ["kick the ball into the goal", "push the soccer ball into the net", "score a goal with the ball"],
    "stick-pull-v3": ["use the stick to pull the box", "grasp the stick and pull the box with it",
                      "drag the box toward you with the stick"],
    "stick-push-v3": ["use the stick to push the box", "grasp the stick and push the box with it",
                      "shove the box away with the stick"],
    "sweep-into-v3": ["sweep the puck into the hole", "push the puck into the hole",
                      "slide the puck into the hole"],
    "sweep-v3": ["sweep the puck off the table", "push the puck off the edge of the table",
                 "brush the puck off the table"],
    "window-close-v3": ["close the window", "slide the window shut", "push the window closed"],
    "window-open-v3": ["open the window", "slide the window open", "push the window open"],
}

AI2THOR_INSTRUCTIONS: Dict[str, List[str]] = {
    "pickup": ["pick up the {obj}", "grab the {obj}", "take the {obj}"],
    "open": ["open the {obj}", "pull the {obj} open", "open up the {obj}"],
    "close": ["close the {obj}", "shut the {obj}", "push the {obj} closed"],
    "toggle_on": ["turn on the {obj}", "switch on the {obj}", "start the {obj}"],
    "toggle_off": ["turn off the {obj}", "switch off the {obj}", "stop the {obj}"],
}


def object_words(object_type: str) -> str:
    """An AI2-THOR object type in words: ``"CellPhone"`` -> ``"cell phone"``."""
    return " ".join(w.lower() for w in re.findall(r"[A-Z][a-z]*|[a-z]+|\d+", object_type))


def pick_phrasing(phrasings: List[str], seed: int, paraphrase: bool) -> str:
    """One of ``phrasings``, drawn from ``seed`` when ``paraphrase`` else the first (canonical) one."""
    if not paraphrase:
        return phrasings[0]
    return phrasings[int(np.random.default_rng(seed).integers(len(phrasings)))]
