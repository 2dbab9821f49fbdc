<?php

declare(strict_types=1);

namespace Handoff\Laravel;

use Handoff\Symfony\HandoffFileResponse;
use Illuminate\Filesystem\FilesystemAdapter;

/**
 * A `local` disk whose response() and download() (Storage::disk(...)->download()) send the
 * file with Handoff\send_file() instead of copying it through PHP: the same head (type,
 * length, disposition, the caller's headers), Range answered by send_file(). Made by
 * {@see HandoffServiceProvider} from the disk Laravel itself builds, so every other method
 * and setting is the stock adapter's. Without the extension it is the stock adapter.
 */
class HandoffFilesystemAdapter extends FilesystemAdapter
{
    /** @var array{tag?: string, rate?: int, rate_group?: string} */
    private array $handoffOptions = [];

    /**
     * The stock local disk $disk, as this class. Copies its state instead of calling the
     * constructor, whose parameters differ between Laravel 8 (flysystem 1) and 9+ (flysystem 3).
     *
     * @param array{tag?: string, rate?: int, rate_group?: string} $options
     */
    public static function fromLocalDisk(FilesystemAdapter $disk, array $options): self
    {
        $adapter = (new \ReflectionClass(self::class))->newInstanceWithoutConstructor();
        \Closure::bind(function () use ($disk): void {
            foreach (get_object_vars($disk) as $name => $value) {
                $this->{$name} = $value;
            }
        }, $adapter, FilesystemAdapter::class)();
        $adapter->handoffOptions = $options;

        return $adapter;
    }

    public function response($path, $name = null, array $headers = [], $disposition = 'inline')
    {
        $response = parent::response($path, $name, $headers, $disposition);
        if (HandoffFileResponse::handoffAvailable()) {
            $file = $this->path($path);
            $options = $this->handoffOptions;
            $response->setCallback(static function () use ($file, $options): void {
                \Handoff\send_file($file, $options);
            });
        }

        return $response;
    }
}
